"""Data parallel training: torchrun with 2 gloo processes on CPU matches one process.

Every torchrun here is slow (two processes, each importing torch and joining a group), so
what needs no second process runs in this one: gradient accumulation, and the batch rule,
which reads only the ranks' count (patched)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ONE_THREAD, SHARED_WIKITEXT, trained_run
from test_train_cli import scalars

from bertpretrain import distributed
from bertpretrain.training import checkpoint

# dropout off: with it, each rank draws its own masks and the runs differ by design.
# Adam with an eps far above the gradients updates in proportion to the gradient, so a
# gradient scaled by 1/world (DDP's averaging of per-rank shares of a global mean) shows
# in the losses from step 2 on; with the usual eps Adam would hide it.
ARGS = [
    "model=tiny",
    "speed.precision=fp32",  # ranks and one process sum in another order: fp32 keeps it close
    "model.dropout=0",
    "optim.lr=1.0",
    "optim.eps=10.0",
    "optim.grad_clip=0",
    f"data.dir={SHARED_WIKITEXT}",
    "data.train_split=valid",
    "data.valid_split=test",
    "trainer.batch_size=64",
    "trainer.log_every=1",
    "trainer.eval_batches=1",
]
TOLERANCE = 1e-4  # relative: the all-reduce sums gradients in another order than one process


def torchrun(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "bertpretrain", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def losses(run_dir: Path) -> dict[str, list[float]]:
    curves = scalars(run_dir)
    return {k: [v for _, v in curves[f"train/{k}"]] for k in ("mlm_loss", "nsp_loss")}


@pytest.fixture(scope="module")
def single(tmp_path_factory, cli_env, wikitext_dir) -> Path:
    # one thread, as torchrun gives each of its processes
    cwd = tmp_path_factory.mktemp("single")
    return trained_run(cwd, [*ARGS, "trainer.max_steps=4"], cli_env | ONE_THREAD)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_and_share_one_run_dir(tmp_path, cli_env, single):
    result = torchrun([*ARGS, "trainer.max_steps=4"], tmp_path, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.parent.name != "latest"]
    assert len(runs) == 1, runs  # not one time-stamped dir per rank
    (run_dir,) = runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    assert (run_dir / "train.log").is_file() and (run_dir / ".hydra").is_dir()
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step_00000004.pt"]
    ours, reference = losses(run_dir), losses(single)
    for key in ("mlm_loss", "nsp_loss"):
        assert len(ours[key]) == 4
        assert ours[key] == pytest.approx(reference[key], rel=TOLERANCE), key
    assert result.stdout.count("done: 4 steps") == 1  # only rank 0 logs


def test_gradient_accumulation_matches_the_whole_batch(tmp_path, bertpretrain):
    """The same runs in one process: 4 micro-steps of 4 examples give the losses of 16."""
    small = [a for a in ARGS if not a.startswith("trainer.batch_size")]
    small += ["trainer.batch_size=16", "trainer.max_steps=3"]
    for run, micro_steps in (("whole", 1), ("accumulated", 4)):
        args = [*small, f"trainer.grad_accum={micro_steps}", f"hydra.run.dir={run}"]
        result = bertpretrain(["train", *args], tmp_path)
        assert result.code == 0, result.err[-2000:]
    ours, reference = losses(tmp_path / "accumulated"), losses(tmp_path / "whole")
    for key in ("mlm_loss", "nsp_loss"):
        assert len(ours[key]) == 3
        assert ours[key] == pytest.approx(reference[key], rel=1e-5), key


@pytest.mark.slow
def test_distributed_run_resumes_from_its_checkpoint(tmp_path, cli_env, single):
    first = torchrun([*ARGS, "trainer.max_steps=2", "hydra.run.dir=run"], tmp_path, cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(
        [*ARGS, "trainer.max_steps=4", "hydra.run.dir=run", "trainer.resume=true"],
        tmp_path,
        cli_env,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout
    ours = losses(tmp_path / "run")
    assert len(ours["mlm_loss"]) == 4  # steps 1-2 from the first run, 3-4 after resuming
    assert ours["mlm_loss"] == pytest.approx(losses(single)["mlm_loss"], rel=TOLERANCE)


@pytest.mark.slow
def test_every_rank_trains_on_rank_zeros_wordpiece_vocabulary(
    tmp_path, cli_env, bertpretrain, monkeypatch
):
    """WordPiece training is not reproducible, so each rank training its own would give
    each its own ids; rank 0 shares its vocabulary instead. A single process (this one)
    reading rank 0's vocabulary from the cache must then see the same losses."""
    pytest.importorskip("tokenizers", reason="pip install -e '.[wordpiece]'")
    env = cli_env | {"BERTPRETRAIN_DATA": str(tmp_path / "data")}
    args = [*ARGS, "tokenizer=wordpiece", "tokenizer.vocab_size=2000", "trainer.max_steps=2"]
    ranks = torchrun([*args, "hydra.run.dir=ranks"], tmp_path, env)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    monkeypatch.setenv("BERTPRETRAIN_DATA", env["BERTPRETRAIN_DATA"])
    one = bertpretrain(["train", *args, "hydra.run.dir=one"], tmp_path)
    assert one.code == 0, one.err[-3000:]
    assert "vocabulary from cache" in one.out
    ours, reference = losses(tmp_path / "ranks"), losses(tmp_path / "one")
    for key in ("mlm_loss", "nsp_loss"):
        assert ours[key] == pytest.approx(reference[key], rel=TOLERANCE), key


def test_a_batch_that_does_not_split_across_ranks_is_refused_in_one_line(
    tmp_path, bertpretrain, monkeypatch
):
    """Rank 0 of two, as the trainer sees it: the rule reads only the ranks' count."""
    monkeypatch.setattr(distributed, "ranks", lambda: distributed.Ranks(rank=0, world=2))
    args = [*ARGS, "trainer.batch_size=63", "trainer.max_steps=1", "hydra.run.dir=run"]
    line = bertpretrain(["train", *args], tmp_path).error_line()
    assert "trainer.batch_size=63 does not split into 2 ranks" in line


def test_only_rank_zero_probes_the_run_dir(tmp_path, monkeypatch):
    """The precheck probes a new run dir by creating and removing its folders; two ranks
    probing one dir removed the folders the other was creating ("cannot create the run dir
    ...: No such file or directory" under load). Rank 0 alone creates it (run_dir.py)."""
    from bertpretrain.commands.precheck import precheck
    from bertpretrain.commands.train import parse_hydra_args

    monkeypatch.chdir(tmp_path)
    touched = []
    monkeypatch.setattr(Path, "mkdir", lambda self, *args, **kwargs: touched.append(self))
    monkeypatch.setattr(Path, "rmdir", lambda self: touched.append(self))
    args = parse_hydra_args(["model=tiny", "hydra.run.dir=outputs/new"])
    precheck(args, probe_run_dir=False)
    assert touched == []
    precheck(args)
    assert tmp_path / "outputs" / "new" in touched
