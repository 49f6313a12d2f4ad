"""The command as users run it, against the in-process benchmark, the reference's own code
and transformers.

`bertpretrain train` and d2l's training code (reference_d2l.py) each run as a process
twice, for `short` and `long` steps: the steady rate is (long - short) * batch over the
difference of their wall times, so start-up (imports, data, the checkpoint written at the
end) cancels. The in-process step of step.py, ours and transformers', runs in the same
round on the same sizes. Rounds alternate the contenders; medians are reported, each
round's figure kept.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import ON_VALID_SPLIT, SHARED, cli, timed
from benchmarks.step import bench_training
from bertpretrain.device import resolve_precision

D2L = Path(__file__).with_name("reference_d2l.py")
# (model, max_len, batch, short, long): the reference run, and base where packing pays most.
# Base runs 8 steps between its two runs: over 4 (2 and 6), single steps' spread of 14 to
# 17 seq/s in bf16 moved the steady figure by more than the 10% the comparison asks.
SHAPES = [("tiny", 64, 512, 10, 40), ("base", 128, 32, 3, 11)]


def command_seconds(root: Path, model: str, max_len: int, batch: int, steps: int, precision):
    """Wall time of `bertpretrain train` for `steps` steps on WikiText-2's validation split."""
    seconds, _ = cli(
        ["train", f"model={model}", *ON_VALID_SPLIT, f"data.root={root}"]
        + [f"data.max_len={max_len}"]
        + [f"trainer.batch_size={batch}", f"trainer.max_steps={steps}"]
        + [f"speed.precision={precision}", f"hydra.run.dir={root}/run-{time.time_ns()}"],
        root,
    )
    return seconds


def d2l_seconds(root: Path, steps: int) -> float:
    train = SHARED / "wiki.valid.tokens"
    command = [sys.executable, str(D2L), "--steps", str(steps), "--train", str(train)]
    return timed(command, root)[0]


def has_d2l() -> bool:
    try:
        import d2l  # noqa: F401
    except ImportError:
        print(
            "d2l is not installed (pip install --no-deps d2l==1.0.3): no reference row",
            file=sys.stderr,
        )
        return False
    return True


def steady(seconds: dict[int, float], batch: int) -> float:
    """seq/s between the shorter and the longer of two runs: start-up cancels."""
    short, long = sorted(seconds)
    return (long - short) * batch / (seconds[long] - seconds[short])


def one_round(root: Path, shape: tuple, asked: str, peaks, reference: bool) -> dict[str, float]:
    """seq/s of each contender at one shape and precision, one after the other."""
    model, max_len, batch, short, long = shape
    steps = (short, long)
    figures = {
        "bertpretrain train (command)": steady(
            {n: command_seconds(root, model, max_len, batch, n, asked) for n in steps}, batch
        )
    }
    if reference and model == "tiny":
        figures["d2l 1.0.3 (fp32, its own loop)"] = steady(
            {n: d2l_seconds(root, n) for n in steps}, batch
        )
    precision = resolve_precision(asked, "cpu")
    cpu = torch.device("cpu")
    for row in bench_training(model, max_len, batch, precision, 1, 3, cpu, peaks, memory=False):
        figures[f"{row['contender']} (in-process step)"] = row["seq_per_s"]
    return figures


def bench_command(models: list[str], precisions: list[str], reps: int, peaks) -> list[dict]:
    """Per shape and precision: the command, the in-process step and transformers' (and
    for tiny, d2l's fp32 code), `reps` alternating rounds."""
    reference = has_d2l()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for shape in SHAPES:
            model, max_len, batch = shape[:3]
            if model not in models:
                continue
            command_seconds(root, model, max_len, batch, 1, "fp32")  # prepares the store
            for asked in precisions:
                rounds = [one_round(root, shape, asked, peaks, reference) for _ in range(reps)]
                precision = resolve_precision(asked, "cpu")
                what = f"steady {model} L={max_len} B={batch} speed.precision={asked} ({precision})"
                for contender in rounds[0]:
                    figures = [r[contender] for r in rounds]
                    median = statistics.median(figures)
                    rows.append(
                        {
                            "what": what,
                            "contender": contender,
                            "seq_per_s": median,
                            "rounds": figures,
                        }
                    )
    return rows


def print_ratios(rows: list[dict]) -> None:
    """The command against each other contender of its shape and precision."""
    by_what: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["what"].startswith("steady "):
            by_what.setdefault(row["what"], {})[row["contender"]] = row["seq_per_s"]
    for what, figures in by_what.items():
        command = figures.pop("bertpretrain train (command)")
        for contender, value in figures.items():
            print(f"{what}: command / {contender} = {command / value:.2f}x")
