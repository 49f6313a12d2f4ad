"""Where a training step's time goes: torch.profiler over our step (or transformers') on
real WikiText-2 batches, the top operators by self time, and the costliest shapes of the
heaviest ones.

    python scripts/profile_step.py                               # tiny, fp32, ours
    python scripts/profile_step.py --precision bf16 --contender transformers
    python scripts/profile_step.py --model base --max-len 128 --batch 32 --steps 1

The step is benchmarks/step.py's (the trainer's `training_step`: forward, backward,
clipping, Adam), after two warm-up steps, so both contenders are profiled on the same
batches, sizes and optimizer as `scripts/bench.py --only train` times them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.harness import real_batches  # noqa: E402
from benchmarks.step import ours, transformers_bert  # noqa: E402

from bertpretrain.memory import allocator  # noqa: E402

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["tiny", "base"], default="tiny")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--contender", choices=["ours", "transformers"], default="ours")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=2, help="profiled steps, after 2 warm-up steps")
    p.add_argument("--rows", type=int, default=15, help="operators in the table")
    args = p.parse_args()

    if args.contender == "ours":  # as `bertpretrain train` runs on the CPU (benchmarks/step.py)
        allocator.keep_freed_pages()
    batches, vocab, _ = real_batches(args.max_len, args.batch, 2 + args.steps)
    make = ours if args.contender == "ours" else transformers_bert
    step = make(args.model, vocab, args.precision, torch.device("cpu"))
    for batch in batches[:2]:
        step(batch)
    # Two passes over the same batches: recording shapes costs every operator time of its
    # own (a base bf16 step profiled at 1.7x its length), which would overstate the small
    # ones, so the table's times come from a pass without it and the shapes from another.
    events = _profiled(step, batches[2:], record_shapes=False).key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(
        f"{args.contender}, {args.model}, {args.precision}: {total / 1e3 / args.steps:.0f} ms a step"
    )
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]
    for e in top:
        share = 100 * e.self_cpu_time_total / total
        print(f"{share:5.1f}%  {e.self_cpu_time_total / 1e3 / args.steps:7.1f} ms/step  {e.key}")
    matmuls = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    print(f"matmuls ({', '.join(sorted(MATMULS))}): {100 * matmuls / total:.0f}% of the step")
    print("\nthe costliest shapes of the top five (a second pass, recording shapes: slower):")
    by_shape = _profiled(step, batches[2:], record_shapes=True).key_averages(
        group_by_input_shape=True
    )
    for e in top[:5]:
        shapes = sorted(
            (s for s in by_shape if s.key == e.key), key=lambda s: -s.self_cpu_time_total
        )
        for s in shapes[:3]:
            ms = s.self_cpu_time_total / 1e3 / args.steps
            print(
                f"  {e.key:24s} {ms:7.1f} ms/step  x{s.count // args.steps}  {str(s.input_shapes)[:90]}"
            )


def _profiled(step, batches: list[dict], record_shapes: bool) -> profile:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=record_shapes) as prof:
        for batch in batches:
            step(batch)
    return prof


if __name__ == "__main__":
    main()
