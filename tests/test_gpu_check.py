"""scripts/gpu_check.sh in its CPU smoke (tiny sizes, 2 steps): every stage runs to its
end and reports, so that a typo does not cost a GPU session its minutes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

STAGES = ["tests", "bench", "large", "tiny"]


@pytest.mark.slow
def test_the_gpu_check_runs_every_stage_in_its_cpu_smoke(tmp_path, wikitext_dir, cli_env):
    env = {**cli_env, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu-smoke", "--data", str(wikitext_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    stages = report["stages"]
    assert {name: stages[name]["status"] for name in STAGES} == dict.fromkeys(STAGES, "ran")
    assert "skipped" in stages["tests"]["summary"]  # no GPU here
    bench = stages["bench"]["rows"]
    assert [row["contender"] for row in bench] == ["bertpretrain", "transformers"] * 2
    assert all(row["seq_per_s"] > 0 and row["mfu"] > 0 for row in bench)
    assert stages["large"]["peak_gib"] > 0 and stages["large"]["planned_gib"] > 0
    assert [step for step, _, _ in stages["tiny"]["curves"]["gpu"]] == [1, 2]
    assert "memory: model=tiny data.max_len=64" in done.stdout  # the table
    logs = {path.name for path in tmp_path.iterdir()}
    assert logs == {"gpu-check.json", "gpu-check.log", *(f"gpu-check-{s}.log" for s in STAGES)}
