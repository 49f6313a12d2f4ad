"""The tools in scripts/ run on real run dirs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_plot_losses_draws_a_png_from_tensorboard_events(tiny_run, tmp_path):
    pytest.importorskip("matplotlib", reason="pip install -e '.[plot]'")
    out = tmp_path / "losses.png"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "plot_losses.py"),
            str(tiny_run),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_losses_skips_what_a_sweeps_glob_matches_besides_run_dirs(tiny_run, tmp_path):
    pytest.importorskip("matplotlib", reason="pip install -e '.[plot]'")
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    out = tmp_path / "losses.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plot_losses.py"), str(tiny_run)]
        + [str(tmp_path / "multirun.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and out.is_file()


def test_plot_losses_refuses_a_folder_without_events(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plot_losses.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "no tensorboard/ folder" in result.stderr


@pytest.mark.slow
def test_context_check_compares_the_crane_vectors_of_a_run(tiny_run, collapsed_run):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "context_check.py"),
            str(tiny_run),
            str(collapsed_run),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    healthy, collapsed = json.loads(result.stdout)
    assert healthy["crane_token"] == "crane" and healthy["val_token_spread"] > 0.3
    assert healthy["crane_max_diff"] > 0.03 and healthy["crane_cosine"] < 0.9999
    assert collapsed["crane_max_diff"] < 0.01 and collapsed["crane_cosine"] > 0.9999


def _house_check(src) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "house_check.py"), str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_house_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "bertpretrain"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from bertpretrain.sub import b\n")
    (package / "sub" / "b.py").write_text("def f(cfg):\n    from bertpretrain import a\n")
    (package / "c.py").write_text(  # a type-only import never runs: no cycle with a
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bertpretrain import a\n"
        "def g(x: 'Config'):\n" + "    x = 1\n" * 60
    )
    (package / "d.py").write_text("from . import c\nfrom .c import g\n")
    out = _house_check(tmp_path)
    assert "== import cycles: 1\n  bertpretrain.a <-> bertpretrain.sub.b\n" in out
    assert "c.py:4: g is 61 lines" in out
    assert "b.py:1: f(cfg: ?)" in out and "c.py:4: g(x: 'Config')" in out


def test_house_check_reports_three_sections_on_the_package():
    """The format only: bertpretrain.load <-> bertpretrain.hf.published is still a cycle in
    this tree (issue 27 breaks it in load.py/hf/). Once it is gone, assert
    "== import cycles: 0" here."""
    out = _house_check(REPO / "src")
    titles = [line.split(":")[0] for line in out.splitlines() if line.startswith("== ")]
    assert titles == [
        "== modules over 300 lines, functions over 60",
        "== import cycles",
        "== parameters annotated Config or named cfg",
    ]
    assert "bertpretrain.config <-> bertpretrain.config_checks" not in out
    assert "training/loop.py:" in out and "train(cfg: Config)" in out


def made_task(source: Path, out: Path, kind: str, glue: str, test_header: str):
    """A 90-example task of `kind` made by scripts/wikitext_task.py, read back as GLUE's
    `glue` task; its train split."""
    sys.path.insert(0, str(REPO / "scripts"))
    from wikitext_task import make_task

    from bertpretrain.config import TaskConfig
    from bertpretrain.data.glue import read_task

    counts = make_task(source, out, 90, seed=0, kind=kind)
    assert counts == {"train": 90, "dev": 30, "test": 30}
    assert (out / "test.tsv").read_text().startswith(test_header)
    task = read_task(TaskConfig(glue, str(out), "classification", None, None, None))
    return task.splits["train"]


def test_wikitext_single_task_reads_as_sst2_and_only_word_order_tells_labels_apart(
    wikitext_dir, tmp_path
):
    import random

    source = wikitext_dir / "wiki.test.tokens"
    train = made_task(source, tmp_path, "single", "sst2", "index\tsentence\n")
    from wikitext_task import disturbed

    assert train.text_b is None and 30 < train.labels.sum() < 60  # about half are real
    rng = random.Random(0)
    for sentence in train.text_a[:20]:
        changed = disturbed(sentence, rng)
        assert changed != sentence and changed.endswith(" .")
        assert sorted(changed.split()) == sorted(sentence.split())


def test_wikitext_words_task_reads_as_rte_and_only_sentence1_tells_labels_apart(
    wikitext_dir, tmp_path
):
    source = wikitext_dir / "wiki.test.tokens"
    train = made_task(source, tmp_path, "words", "rte", "index\tsentence1\tsentence2\n")
    assert 30 < (train.labels == 0).sum() < 60  # about half entailment (RTE's label 0)
    for premise, hypothesis, label in zip(train.text_a, train.text_b, train.labels, strict=True):
        held = set(premise.split())
        found = [w in held for w in hypothesis.split()]
        assert 3 <= len(found) <= 6
        assert all(found) if label == 0 else not any(found), (premise, hypothesis, label)


@pytest.mark.parametrize("path", ["bucketed", "padded", "last"])
def test_attention_bench_times_each_cpu_attention_on_real_batches(wikitext_dir, path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "attention_bench.py"), "--path", path]
        + ["--max-len", "32", "--batch", "8", "--heads", "2", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ms a call" in result.stdout and "sum of squared lengths" in result.stdout


def test_profile_step_tables_our_step_with_the_matmuls_share(wikitext_dir):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_step.py")]
        + ["--max-len", "32", "--batch", "8", "--steps", "1", "--rows", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ours, tiny, fp32:") and lines[0].endswith("ms a step")
    assert sum("ms/step  aten::" in line for line in lines[1:6]) >= 4
    share = next(line for line in lines if line.startswith("matmuls ("))
    assert 0 < int(share.split(": ")[1].split("%")[0]) <= 100
    assert "the costliest shapes" in result.stdout
