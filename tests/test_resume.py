"""Resuming a run: its recorded config reused, its TensorBoard curve whole (kill -9 and
signals themselves: test_reliability.py)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from conftest import ONE_THREAD, SHARED_WIKITEXT, trained_run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertpretrain.training import checkpoint
from bertpretrain.training.progress import open_writer
from bertpretrain.training.resume import flat


def test_a_resumes_event_file_sorts_after_the_killed_runs_and_the_curve_stays_whole(tmp_path):
    folder = tmp_path / "tensorboard"
    dead = open_writer(folder, purge_step=1)
    for step in range(1, 5):  # logged up to step 4, checkpointed at step 2, then killed
        dead.add_scalar("train/loss", float(step), step)
    dead.close()
    # The worst name the dead run's file can have: the resume's second, or a later one (a
    # clock stepped back), with a pid whose digits sort after any other.
    (written,) = folder.iterdir()
    later = int(time.time()) + 1
    written.rename(folder / f"events.out.tfevents.{later:010d}.{socket.gethostname()}.99999999.0")
    resumed = open_writer(folder, purge_step=3)
    for step in range(3, 7):
        resumed.add_scalar("train/loss", 10.0 + step, step)
    resumed.close()
    acc = EventAccumulator(str(folder))
    acc.Reload()
    curve = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert curve == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0), (6, 16.0)]


# A run with settings of its own, data=text among them: a resume must reuse every one.
RECIPE = [
    "model=tiny",
    "speed.precision=fp32",
    "data=text",
    f"data.files=[{SHARED_WIKITEXT / 'wiki.valid.tokens'}]",
    f"data.valid_files=[{SHARED_WIKITEXT / 'wiki.test.tokens'}]",
    "trainer.batch_size=16",
    "trainer.max_steps=2",
    "trainer.eval_batches=1",
    "optim.lr=3e-4",
]


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, cli_env, wikitext_dir) -> Path:
    return trained_run(tmp_path_factory.mktemp("recorded"), RECIPE, cli_env | ONE_THREAD)


@pytest.mark.slow  # trains a run, then resumes it
def test_a_resume_as_the_readme_shows_reuses_the_runs_recorded_settings(
    recorded_run, tmp_path, bertpretrain
):
    run = tmp_path / "run"
    shutil.copytree(recorded_run, run)
    resumed = bertpretrain(
        ["train", f"hydra.run.dir={run}", "trainer.resume=true", "trainer.max_steps=3"], tmp_path
    )
    assert resumed.code == 0, resumed.err[-3000:]
    assert "(step 2)" in resumed.out
    before = checkpoint.load(checkpoint.path_for(recorded_run, 2))["config"]
    after = checkpoint.load(checkpoint.path_for(run, 3))["config"]
    changed = {k for k, v in flat(after).items() if flat(before)[k] != v}
    assert changed == {"trainer.max_steps", "trainer.resume"}


@pytest.mark.slow  # trains a run, then resumes it
def test_a_resume_refuses_only_an_override_that_changes_the_results_and_leaves_no_dir(
    recorded_run, tmp_path, bertpretrain
):
    args = ["train", f"trainer.resume={recorded_run}", "trainer.max_steps=3"]
    refused = bertpretrain([*args, "trainer.batch_size=32", "speed.num_workers=1"], tmp_path)
    line = refused.error_line()
    assert "trainer.batch_size 16 -> 32 would change the results" in line, line
    assert "num_workers" not in line
    assert list(tmp_path.iterdir()) == []  # no outputs/DATE/TIME left behind


@pytest.mark.slow  # trains a run, then resumes it
def test_a_checkpoint_without_its_runs_record_gives_the_recorded_settings(
    recorded_run, tmp_path, bertpretrain
):
    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(checkpoint.path_for(recorded_run, 2), tmp_path / "elsewhere" / "step.pt")
    resumed = bertpretrain(
        ["train", f"trainer.resume={copy}", "trainer.max_steps=3", "hydra.run.dir=run"], tmp_path
    )
    assert resumed.code == 0, resumed.err[-3000:]
    assert "optim.lr=0.0003" in (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
