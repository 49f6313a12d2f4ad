"""speed.compile: the tiny reference run eager and torch.compile'd."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time

import torch

from benchmarks.harness import SIZES, real_batches, sync
from bertpretrain.model.bert import BertConfig, BertForPretraining
from bertpretrain.training.optimize import PretrainingLosses, training_step


def bench_compile(steps: int, precisions: list[str], device) -> list[dict]:
    """speed.compile: the tiny reference run (L=64, B=512) eager and torch.compile'd, on
    real batches (each with its own count of real tokens, as in training: the packed
    shapes vary). Compiled twice: with an empty inductor cache (a first run) and again
    with the cache that run left (every later run of the same model on this machine). The
    first steps carry compilation and any recompilation for a new shape; the median of the
    last half is the steady step. From the two, the time of a 50- and a 1000-step run and
    the step count from which compiling pays."""
    batches, vocab, _ = real_batches(64, 512, steps)
    rows = []
    for precision in precisions:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            eager = _timed_steps(batches, vocab, precision, device, compiled=False)
            rows.append(_compile_row(precision, "eager", eager))
            for contender in ("compiled, cold cache", "compiled, warm cache"):
                torch._dynamo.reset()  # forget the compiled graphs, keep the disk cache
                timing = _timed_steps(batches, vocab, precision, device, compiled=True)
                rows.append(_compile_row(precision, contender, timing, eager))
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
    return rows


def _timed_steps(batches, vocab, precision, device, compiled: bool) -> tuple[float, float]:
    """(steady step seconds, extra seconds of the first steps) of training on `batches`."""
    layers, hidden, heads, ffn, dropout = SIZES["tiny"]
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(vocab, layers, hidden, heads, ffn, dropout)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    losses = torch.compile(PretrainingLosses(model)) if compiled else PretrainingLosses(model)

    def autocast():
        return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")

    times = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        start = time.perf_counter()
        training_step(losses, optimizer, [batch], autocast, 1.0)
        sync(device)
        times.append(time.perf_counter() - start)
    steady = statistics.median(times[len(times) // 2 :])
    return steady, max(0.0, sum(times) - steady * len(times))


def _compile_row(precision, contender, timing, eager=None) -> dict:
    steady, extra = timing
    row = {
        "what": f"compile tiny L=64 B=512 {precision}",
        "contender": contender,
        "step_seconds": steady,
        "overhead_seconds": extra,
        "run_50_seconds": extra + 50 * steady,
        "run_1000_seconds": extra + 1000 * steady,
    }
    if eager is not None:
        gain = eager[0] - steady
        row["pays_after_steps"] = (extra - eager[1]) / gain if gain > 0 else math.inf
    return row
