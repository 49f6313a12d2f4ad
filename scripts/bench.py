"""Benchmark bertpretrain against Hugging Face transformers on the same work.

    python scripts/bench.py                 # everything, prints a table, writes bench.json
    python scripts/bench.py --only train --models tiny --reps 5

Measured in one process, contenders interleaved over --reps repetitions, medians reported:
- training throughput (fwd + bwd + clip + Adam step) of our trainer's step and of
  transformers' BertForPreTraining (SDPA attention) on identical sizes, optimizer and
  batches (labels -100 except at the masked positions);
- this machine's matmul peak (fp32, bf16) and each contender's model FLOPs utilisation,
  counting FLOPs on the padded batch as a plain implementation computes them;
- peak memory of a training step (RSS growth on CPU, max_memory_allocated on GPU);
- building the examples of a WikiText-2-train-sized corpus, cold and from the cache;
- the cold start of `bertpretrain encode` as a process;
- `train`'s memory plan against the peak resident memory of real training runs (`--only
  memory`: tiny and base at max_len 64 and 512, each a `bertpretrain train` process);
- the command end to end (`--only command`): `bertpretrain train` as a process, its
  steady seq/s against the in-process step, transformers and the reference's own d2l
  code (benchmarks/command.py);
- `speed.compile` (`--only compile`): the tiny run eager and compiled, the compile time and
  the steady step, and from them a 50- and a 1000-step run's time;
- fine-tuning (`--only finetune`): one pretrained tiny run fine-tuned by `bertpretrain
  finetune` and by transformers' BertForSequenceClassification with the same recipe, on a
  single-sentence and a pair task made from WikiText-2: the median dev score over seeds
  and the time per epoch (benchmarks/finetune.py).
transformers is optional (`pip install -e ".[bench]"`); without it only ours is measured.
Each kind of measurement is a module of scripts/benchmarks/, around harness.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from benchmarks import command, compile, data, finetune, memory, startup, step
from benchmarks.harness import matmul_peak, print_table, write_json

SECTIONS = [
    "train",
    "command",
    "examples",
    "encode",
    "memory",
    "resident",
    "corpus",
    "compile",
    "finetune",
]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
    )
    p.add_argument("--corpus-tokens", type=int, default=100_000_000, help="for --only corpus")
    p.add_argument(
        "--corpus-dir", type=Path, help="--only corpus: reuse (or make) the big corpus here"
    )
    p.add_argument("--compile-steps", type=int, default=40, help="for --only compile")
    p.add_argument("--resident-steps", type=int, default=1000, help="for --only resident")
    p.add_argument(
        "--finetune-steps", type=int, default=300, help="--only finetune: pretraining steps"
    )
    p.add_argument("--finetune-seeds", type=int, default=3, help="for --only finetune")
    p.add_argument(
        "--finetune-examples", type=int, help="--only finetune: cap each task's train split"
    )
    p.add_argument("--models", default="tiny,base")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per timed repetition")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="docs/bench.json", help="where to write the results")
    args = p.parse_args()
    only = set(args.only or ["train", "examples", "encode", "memory"])
    device = torch.device(args.device)

    rows: list[dict] = []
    peaks = {d: matmul_peak(d, device) for d in (torch.float32, torch.bfloat16)}
    for d, v in peaks.items():
        rows.append({"what": "matmul peak", "contender": str(d).split(".")[1], "tflops": v / 1e12})
    models, precisions = args.models.split(","), args.precisions.split(",")
    if "train" in only:
        shapes = {"tiny": [(64, 512)]}
        shapes["base"] = [(128, 8)] if device.type == "cpu" else [(128, 64), (512, 16)]
        for size in models:
            for precision in precisions:
                if size == "base" and precision == "bf16" and device.type == "cpu":
                    continue  # base at bf16 on CPU adds minutes and no decision
                for max_len, batch in shapes[size]:
                    rows += step.bench_training(
                        size, max_len, batch, precision, args.reps, args.steps, device, peaks
                    )
    if "command" in only:
        rows += command.bench_command(
            models, [p.replace("bf16", "auto") for p in precisions], args.reps, peaks
        )
    if "examples" in only:
        rows += data.bench_examples(args.reps)
        rows += data.bench_batches(args.reps)
    if "encode" in only:
        rows += startup.bench_encode_start(args.reps)
    if "memory" in only:
        rows += memory.bench_memory()
    if "resident" in only:
        rows += memory.bench_resident(args.resident_steps)
    if "corpus" in only:
        rows += data.bench_corpus(args.corpus_tokens, args.corpus_dir)
    if "compile" in only:
        rows += compile.bench_compile(args.compile_steps, precisions, device)
    if "finetune" in only:
        rows += finetune.bench_finetune(
            args.finetune_steps, args.finetune_seeds, args.finetune_examples
        )
    print_table(rows)
    command.print_ratios(rows)
    finetune.print_ratios(rows)
    sys.stdout.flush()
    write_json(Path(args.json), device, rows)
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
