"""One layer's training attention on the CPU (model/cpu_attention.py), forward and backward,
on real WikiText-2 batches: milliseconds a call, and how much of the padded (B, L, L) work
its buckets do.

    python scripts/attention_bench.py                          # base's shapes, bf16
    python scripts/attention_bench.py --max-len 64 --batch 512 --heads 2 --dtype float32

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

from bertpretrain.model.attention import pack  # noqa: E402
from bertpretrain.model.cpu_attention import cpu_attention  # noqa: E402

HEAD_DIM = 64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=3, help="timed passes over 4 batches")
    args = p.parse_args()

    dtype = getattr(torch, args.dtype)
    batches, _, _ = real_batches(args.max_len, args.batch, 4)
    packings = [pack(b["valid_lens"], args.max_len, round_rows=True) for b in batches]
    width = 3 * args.heads * HEAD_DIM
    inputs = [torch.randn(len(p.index), width, dtype=dtype, requires_grad=True) for p in packings]

    def one_pass() -> float:
        start = time.perf_counter()
        for packing, qkv in zip(packings, inputs, strict=True):
            out = cpu_attention(qkv, packing, args.heads, args.dropout)
            out.backward(torch.ones_like(out))
        return (time.perf_counter() - start) / len(packings)

    one_pass()  # every batch's shapes once: allocations and oneDNN's compiled matmuls
    times = [one_pass() for _ in range(args.rounds)]
    lengths = torch.cat([b["valid_lens"] for b in batches]).double()
    squares = float((lengths**2).mean()) / args.max_len**2
    print(
        f"{statistics.median(times) * 1e3:.1f} ms a call (median of {args.rounds}: "
        + ", ".join(f"{t * 1e3:.1f}" for t in times)
        + f"); sum of squared lengths / B L^2 = {squares:.3f}"
    )


if __name__ == "__main__":
    main()
