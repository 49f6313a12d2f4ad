"""The CUDA path measured on one GPU in under 8 minutes: scripts/gpu_check.sh installs the
carried wheels, then runs this. docs/benchmarks.md ("The GPU path") says how to start it.

    python scripts/gpu_check.py [--out-dir DIR] [--data DIR]   # on a GPU machine
    python scripts/gpu_check.py --cpu-smoke                    # tiny sizes, 2 steps, on the CPU
    python scripts/gpu_check.py --only bench large             # some stages (a rerun)

Four stages, each a child process with its own time limit, so one slow stage cannot eat
the others' time:
  tests  pytest tests/test_gpu.py: the varlen kernel against the per-sequence reference,
         the model's contracts on CUDA
  bench  base at L=128 and L=512 in bf16 against transformers' BertForPreTraining (SDPA)
         at the same batch: seq/s, tokens/s, MFU against the bf16 matmul peak measured here
         (scripts/gpu_bench.py)
  large  `bertpretrain train model=large data.max_len=512 speed.gradient_checkpointing=true`
         with an 80 GB budget: the memory plan's total against max_memory_allocated
  tiny   200 steps of model=tiny on the GPU in bf16 and on the CPU in fp32, same data and
         seed, dropout off so that only the arithmetic differs: the loss curves side by side
It writes DIR/gpu-check.json (and each stage's log beside it) and prints a table. The exit
status is 1 when a stage did not run to its end; a missed target is a finding, in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


@dataclass(frozen=True)
class Sizes:
    """What each stage runs: the GPU check's sizes, or the CPU smoke's."""

    device: str
    precision: str  # speed.precision of the measured runs
    limits: dict[str, int]  # seconds each stage may take
    bench_model: str  # a size of scripts/bench.py
    bench_shapes: list[tuple[int, int]]  # (L, B) pairs
    bench_steps: int  # timed steps per repetition
    bench_reps: int
    large: list[str]  # overrides of the memory run
    tiny_steps: int
    tiny_log_every: int
    tiny_batch: int = 128


GPU = Sizes(
    device="cuda",
    precision="bf16",
    limits={"tests": 60, "bench": 120, "large": 120, "tiny": 90},  # 6.5 minutes in all
    bench_model="base",
    bench_shapes=[(128, 256), (512, 64)],  # 32k tokens a step each
    bench_steps=10,
    bench_reps=3,
    large=[
        "model=large",
        "data.max_len=512",
        "data.pairing=bert",  # segments filled to max_len: about every position a real token
        "trainer.batch_size=256",
        "trainer.memory_budget=80GB",  # the plan for an 80 GB GPU; the H200 has more
        "trainer.max_steps=3",
        "speed.gradient_checkpointing=true",
    ],
    tiny_steps=200,
    tiny_log_every=10,
)
SMOKE = Sizes(
    device="cpu",
    precision="fp32",  # bf16 is emulated, hence slow, on CPUs without AVX-512 BF16
    limits={"tests": 120, "bench": 120, "large": 120, "tiny": 180},
    bench_model="tiny",
    bench_shapes=[(32, 4)],
    bench_steps=2,
    bench_reps=1,
    large=[
        "model=tiny",
        "data.max_len=64",
        "data.pairing=bert",
        "trainer.batch_size=8",
        "trainer.memory_budget=8GB",
        "trainer.max_steps=2",
        "speed.gradient_checkpointing=true",
    ],
    tiny_steps=2,
    tiny_log_every=1,
    tiny_batch=8,
)
# A run's training log line: "step 10/200  mlm 6.1234  nsp 0.6931  1234.5 seq/s"
LOG_LINE = re.compile(r"step (\d+)/\d+\s+mlm ([\d.]+)\s+nsp ([\d.]+)")
WINDOWS = 3  # the logged windows a loss curve's start and end are averaged over


def default_data() -> Path:
    """The WikiText-2 splits: those carried in .gpu/ (scripts/fetch_wheels.sh), else the
    shared folder beside the repository."""
    carried = REPO / ".gpu" / "wikitext-2"
    return carried if carried.is_dir() else REPO.parent / "shared" / "data" / "wikitext-2"


def train(overrides: list[str], run_dir: Path, data: Path, device: str, precision: str) -> dict:
    """`bertpretrain train` as a process on the WikiText-2 validation split: its summary,
    and its loss curve [(step, mlm, nsp)] read off train.log."""
    args = [
        f"data.dir={data}",
        "data.train_split=valid",
        f"trainer.device={device}",
        f"speed.precision={precision}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "BERTPRETRAIN_DATA": str(run_dir.parent / "cache")}
    subprocess.run([sys.executable, "-m", "bertpretrain", "train", *args], check=True, env=env)
    log = (run_dir / "train.log").read_text()
    curve = [(int(s), float(m), float(n)) for s, m, n in LOG_LINE.findall(log)]
    return {"summary": json.loads((run_dir / "summary.json").read_text()), "curve": curve}


def stage_tests(sizes: Sizes, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    print(done.stdout, done.stderr, sep="\n")
    lines = done.stdout.strip().splitlines()
    return {"passed": done.returncode == 0, "summary": lines[-1] if lines else done.stderr[-300:]}


def stage_bench(sizes: Sizes, args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(SCRIPTS))
    import gpu_bench

    return gpu_bench.run(
        sizes.bench_model,
        sizes.bench_shapes,
        sizes.device,
        sizes.precision,
        sizes.bench_steps,
        sizes.bench_reps,
    )


def stage_large(sizes: Sizes, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = train(
            [*sizes.large, "data.valid_split=null", "trainer.log_every=1"],
            Path(tmp) / "large",
            args.data,
            sizes.device,
            sizes.precision,
        )
    summary = run["summary"]
    planned, peak = summary["planned_memory"], summary["peak_memory"]
    return {
        "overrides": sizes.large,
        "grad_accum": summary["grad_accum"],
        "seq_per_s": summary["seq_per_s"],
        "planned_gib": planned / 2**30,
        "peak_gib": peak / 2**30,
        "peak_over_planned": peak / planned,
        "targets": {
            "fits 80 GB": peak <= 80e9,
            "plan within 10% of the peak": abs(planned / peak - 1) <= 0.10,
        },
    }


def stage_tiny(sizes: Sizes, args: argparse.Namespace) -> dict:
    common = [
        "model=tiny",
        "model.dropout=0.0",  # the GPU kernel may skip attention dropout: compare without
        "data.valid_split=test",
        f"trainer.batch_size={sizes.tiny_batch}",
        "trainer.grad_accum=1",
        f"trainer.max_steps={sizes.tiny_steps}",
        f"trainer.log_every={sizes.tiny_log_every}",
        "trainer.eval_batches=4",
    ]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, device, precision in (
            ("gpu", sizes.device, sizes.precision),
            ("cpu", "cpu", "fp32"),
        ):
            runs[name] = train(common, Path(tmp) / name, args.data, device, precision)["curve"]
    start = {name: mean_mlm(curve[:WINDOWS]) for name, curve in runs.items()}
    end = {name: mean_mlm(curve[-WINDOWS:]) for name, curve in runs.items()}
    fall = {name: start[name] - end[name] for name in runs}
    return {
        "steps": sizes.tiny_steps,
        "curves": runs,
        "mlm_start": start,
        "mlm_end": end,
        "targets": {
            "GPU's final MLM within 5% of the CPU's": abs(end["gpu"] - end["cpu"])
            <= 0.05 * end["cpu"],
            "GPU's MLM falls at least 80% as far as the CPU's": fall["gpu"] >= 0.8 * fall["cpu"],
        },
    }


def mean_mlm(curve: list[tuple[int, float, float]]) -> float:
    return sum(mlm for _, mlm, _ in curve) / len(curve)


STAGES = {"tests": stage_tests, "bench": stage_bench, "large": stage_large, "tiny": stage_tiny}


def run_stage(name: str, limit: int, args: argparse.Namespace) -> dict:
    """One stage as a child process in its own process group, killed whole at `limit`."""
    log_path = args.out_dir / f"gpu-check-{name}.log"
    result_path = args.out_dir / f"gpu-check-{name}.part.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--stage", name, "--result", str(result_path)]
    command += ["--data", str(args.data)] + (["--cpu-smoke"] if args.cpu_smoke else [])
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            child.wait(timeout=limit)
            status = "ran" if child.returncode == 0 else f"error (exit {child.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the stage and the runs it started
            child.wait()
            status = f"timed out after {limit} s"
    seconds = time.perf_counter() - started
    tail = log_path.read_text(errors="replace").splitlines()[-30:]
    print(f"--- stage {name}: {status} in {seconds:.0f} s; last lines of {log_path.name}:")
    print("\n".join(tail), flush=True)
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    result_path.unlink(missing_ok=True)
    return {"status": status, "seconds": round(seconds, 1), "limit_s": limit, **result}


def machine(sizes: Sizes) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": sizes.device,
        "wheels_installed": os.environ.get("GPU_CHECK_INSTALLED", "").split(),
    }
    if sizes.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return info


def tests_rows(stage: dict) -> list[tuple[str, str, str]]:
    return [("tests/test_gpu.py", stage["summary"], "")]


def bench_rows(stage: dict) -> list[tuple[str, str, str]]:
    rows = [
        (
            row["what"],
            f"{row['contender']}: {row['seq_per_s']:.1f} seq/s, "
            f"{row['tokens_per_s']:.0f} real tok/s, MFU {row['mfu']:.1%}",
            f"{row['speedup']:.2f}x" if "speedup" in row else "",
        )
        for row in stage["rows"]
    ]
    peak = f"{stage['peak_tflops']:.1f} TFLOP/s; attention dropout {stage['attention_dropout']}"
    return [*rows, (f"{stage['peak_dtype']} matmul peak", peak, "")]


def large_rows(stage: dict) -> list[tuple[str, str, str]]:
    measured = f"peak {stage['peak_gib']:.2f} GiB, planned {stage['planned_gib']:.2f} GiB"
    what = "memory: " + " ".join(stage["overrides"][:2])
    return [(what, measured, f"peak/plan {stage['peak_over_planned']:.3f}")]


def tiny_rows(stage: dict) -> list[tuple[str, str, str]]:
    start, end = stage["mlm_start"], stage["mlm_end"]
    measured = ", ".join(f"{run} {start[run]:.3f} -> {end[run]:.3f}" for run in ("gpu", "cpu"))
    return [(f"tiny, {stage['steps']} steps: MLM start -> end", measured, "")]


ROWS = {"tests": tests_rows, "bench": bench_rows, "large": large_rows, "tiny": tiny_rows}


def table(stages: dict[str, dict]) -> str:
    """The stages' results as rows of what, measured, ratio or target."""
    rows = [("stage", "status", "seconds (limit)")]
    rows += [
        (name, s["status"], f"{s['seconds']:.0f} ({s['limit_s']})") for name, s in stages.items()
    ]
    for name, stage in stages.items():
        if stage["status"] == "ran":
            rows += ROWS[name](stage)
        rows += [
            (f"target ({name})", t, "met" if met else "MISSED")
            for t, met in stage.get("targets", {}).items()
        ]
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in rows)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, 2 steps, on the CPU")
    p.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT", ".")))
    p.add_argument("--data", type=Path, default=default_data(), help="the WikiText-2 splits")
    p.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES), help="these stages")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child's one stage
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    sizes = SMOKE if args.cpu_smoke else GPU
    if args.stage:
        result = STAGES[args.stage](sizes, args)
        args.result.write_text(json.dumps(result))
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d %H:%M")
    stages = {name: run_stage(name, sizes.limits[name], args) for name in args.only}
    # the machine last: this process holds no CUDA context while the stages measure
    report = {"date": date, "machine": machine(sizes), "sizes": asdict(sizes), "stages": stages}
    (args.out_dir / "gpu-check.json").write_text(json.dumps(report, indent=1))
    print(table(report["stages"]))
    print(f"written: {args.out_dir / 'gpu-check.json'}")
    return 0 if all(s["status"] == "ran" for s in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
