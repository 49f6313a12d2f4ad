"""One layer's attention on the CPU, forward and backward, on real WikiText-2 batches:
milliseconds a call, and how much of the padded (B, L, L) work the buckets do.

    python scripts/attention_bench.py                          # base's shapes, bf16
    python scripts/attention_bench.py --max-len 64 --batch 512 --heads 2 --dtype float32
    python scripts/attention_bench.py --path last              # the last layer's

`--path`: `bucketed`, training with attention dropout (model/cpu_attention.py); `padded`,
SDPA on the batch padded back to (B, heads, L, d) (model/attention.py: the CPU without
dropout, as in evaluation and `encode`); `last`, the last layer's queries at the rows
pretraining's losses read (model/queries.py).

Compare two versions of the code by running this under each one's PYTHONPATH, alternating.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.harness import real_batches  # noqa: E402

from bertpretrain.model.attention import pack, padded_attention  # noqa: E402
from bertpretrain.model.cpu_attention import cpu_attention  # noqa: E402
from bertpretrain.model.queries import pretraining_queries, query_attention  # noqa: E402

HEAD_DIM = 64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--path", choices=["bucketed", "padded", "last"], default="bucketed")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over 4 batches")
    args = p.parse_args()

    dtype = getattr(torch, args.dtype)
    batches, _, _ = real_batches(args.max_len, args.batch, 4)
    calls = [attention_call(b, args, dtype) for b in batches]

    def one_pass() -> float:
        start = time.perf_counter()
        for call in calls:
            out = call()
            out.backward(torch.ones_like(out))
        return (time.perf_counter() - start) / len(calls)

    one_pass()  # every batch's shapes once: allocations and oneDNN's compiled matmuls
    times = [one_pass() for _ in range(args.rounds)]
    lengths = torch.cat([b["valid_lens"] for b in batches]).double()
    squares = float((lengths**2).mean()) / args.max_len**2
    print(
        f"{statistics.median(times) * 1e3:.1f} ms a call (median of {args.rounds}: "
        + ", ".join(f"{t * 1e3:.1f}" for t in times)
        + f"); sum of squared lengths / B L^2 = {squares:.3f}"
    )


def attention_call(batch: dict, args, dtype: torch.dtype):
    """One batch's attention on `args.path`, on random projections of its packed rows."""
    packing = pack(batch["valid_lens"], args.max_len, round_rows=True)
    width = args.heads * HEAD_DIM

    def projection(rows: int, n: int) -> torch.Tensor:
        return torch.randn(rows, n * width, dtype=dtype, requires_grad=True)

    rows = len(packing.index)
    if args.path == "last":
        starts = torch.cumsum(batch["valid_lens"], 0) - batch["valid_lens"]
        real = batch["pred_weights"] > 0
        grid = len(pretraining_queries(starts, batch["pred_positions"], real)[0].grid)
        q, k, v = projection(grid, 1), projection(rows, 1), projection(rows, 1)
        return lambda: query_attention(q, k, v, packing, args.heads, args.dropout)
    qkv = projection(rows, 3)
    if args.path == "padded":
        return lambda: padded_attention(qkv, packing, args.heads, 0.0)
    return lambda: cpu_attention(qkv, packing, args.heads, args.dropout)


if __name__ == "__main__":
    main()
