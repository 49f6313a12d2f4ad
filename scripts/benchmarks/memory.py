"""`train`'s memory plan against the peak resident memory of real training runs, and a long
run's resident memory step by step (--only resident)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import ON_VALID_SPLIT, Rows

# (model, max_len, batch, steps): batches small enough for base to take seconds a step
MEMORY_RUNS = [
    ("tiny", 64, 512, 30),
    ("tiny", 512, 512, 4),
    ("base", 64, 64, 3),
    ("base", 512, 32, 3),
]


def bench_memory() -> list[dict]:
    """Each run's planned total (what `train` logs before it builds the model) against its
    peak resident memory (ru_maxrss of the whole process, the figure the kernel's
    out-of-memory killer goes by), both read from the run's summary.json."""
    rows = []
    for model, max_len, batch, steps in MEMORY_RUNS:
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run(
                [sys.executable, "-m", "bertpretrain", "train", f"model={model}"]
                + [f"data.max_len={max_len}", f"trainer.batch_size={batch}"]
                + [f"trainer.max_steps={steps}", *ON_VALID_SPLIT, f"hydra.run.dir={folder}/run"],
                check=True,
                capture_output=True,
            )
            summary = json.loads((Path(folder) / "run" / "summary.json").read_text())
        planned, peak = summary["planned_memory"], summary["peak_memory"]
        rows.append(
            {
                "what": f"memory {model} L={max_len} batch {batch}",
                "contender": f"grad_accum {summary['grad_accum']}",
                "planned_mb": planned / 2**20,
                "peak_mb": peak / 2**20,
                "planned_over_peak": planned / peak,
            }
        )
    return rows


STEP = re.compile(r"step (\d+)/\d+ ")
# glibc's default tunables, spelled out: any GLIBC_TUNABLES at all kept the re-exec of
# earlier versions from replacing them, so the same figure compares those versions too
GLIBC_DEFAULTS = "glibc.malloc.tcache_count=7"


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024


def resident_over_steps(steps: int, every: int, tunables: str, *overrides: str) -> dict[int, float]:
    """{step: resident MiB} of a tiny `bertpretrain train` process under GLIBC_TUNABLES
    `tunables`, read from /proc as each log line (every `every` steps) is written. Resident
    memory is not a timing: a loaded machine makes the run slower, not the figures other."""
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    rss = {}
    with tempfile.TemporaryDirectory() as folder:
        args = [
            sys.executable, "-m", "bertpretrain", "train", "model=tiny", *ON_VALID_SPLIT,
            f"trainer.max_steps={steps}",
            f"trainer.log_every={every}", f"hydra.run.dir={folder}/run", *overrides,
        ]  # fmt: skip
        with subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            for line in proc.stdout:
                found = STEP.search(line)
                if found:
                    rss[int(found[1])] = resident_mb(proc.pid)
        if proc.returncode:
            raise RuntimeError(f"training failed with exit code {proc.returncode}")
    return rss


def bench_resident(steps: int) -> list[dict]:
    """Whether a long tiny run's resident memory stays flat: its value at step 50 against
    the last step's, in fp32 and at the default precision. The environment holds glibc's
    default tunables; the run then sets its own malloc policy (memory/allocator.py)."""
    rows = Rows()  # printed as measured: each run takes minutes
    for precision in ("fp32", "auto"):
        rss = resident_over_steps(steps, 50, GLIBC_DEFAULTS, f"speed.precision={precision}")
        first, last = rss[50], rss[max(rss)]
        rows.append(
            {
                "what": f"resident memory, tiny, {steps} steps",
                "contender": f"speed.precision={precision}, bertpretrain's malloc policy",
                "rss_step_50_mb": first,
                "rss_last_mb": last,
                "rss_max_mb": max(rss.values()),
                "growth": last / first - 1,
                "rss_mb": rss,
            }
        )
    return rows
