"""The tools in scripts/ run on real run dirs."""

from __future__ import annotations

import json
import subprocess
import sys

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
