"""The bench stage of scripts/gpu_check.py: our training step against transformers'
BertForPreTraining (SDPA attention) at the same batch, on synthetic batches of BERT's
vocabulary (the WikiText-2 of scripts/bench.py stays behind on the CPU machine).

Each shape runs twice: every sequence full (L real tokens, as with data.pairing=bert), and
lengths spread evenly over [L/4, L] (62% real tokens; WikiText-2's d2l pairs are 42% at
L=128), where skipping the padding pays. MFU counts the FLOPs of the real tokens only,
what an implementation without padding must do (model.flops_per_sequence per sequence),
against the bf16 matmul peak measured in the same process. Both contenders take the same
Adam (fused), clipping and batches (scripts/benchmarks/step.py's `ours` and `hf_inputs`), and the
same attention dropout: none on both where our kernel has none.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from benchmarks import harness
from benchmarks import step as in_process

from bertpretrain.hf.export import hf_config
from bertpretrain.model.attention import attention_path, varlen_kernel
from bertpretrain.model.bert import BertConfig, flops_per_sequence

VOCAB = 30522  # BERT's WordPiece vocabulary
MASK_RATE = 0.15  # BERT's share of masked positions
WARMUP = 3  # untimed steps: cuBLAS heuristics, the allocator, lazy initialisation


def synthetic_batch(length: int, batch: int, shortest: int, g: torch.Generator) -> dict:
    """A batch shaped like the data pipeline's: lengths in [shortest, length], padded to
    `length`; 15% of each sequence's tokens masked, in slots padded to 15% of `length`."""
    valid_lens = torch.randint(shortest, length + 1, (batch,), generator=g)
    slots = max(1, round(MASK_RATE * length))
    masked = (MASK_RATE * valid_lens).round().long().clamp(1, slots)
    pred_weights = (torch.arange(slots) < masked[:, None]).float()  # (B, P)
    pred_positions = torch.zeros(batch, slots, dtype=torch.long)
    for row, n in enumerate(valid_lens.tolist()):  # distinct positions, <cls> and last <sep> spared
        chosen = 1 + torch.randperm(n - 2, generator=g)[: int(masked[row])]
        pred_positions[row, : len(chosen)] = chosen
    return {
        "tokens": torch.randint(5, VOCAB, (batch, length), generator=g),
        "segments": (torch.arange(length) >= valid_lens[:, None] // 2).long(),
        "valid_lens": valid_lens,
        "pred_positions": pred_positions,
        "pred_labels": torch.randint(5, VOCAB, (batch, slots), generator=g) * pred_weights.long(),
        "pred_weights": pred_weights,
        "nsp_labels": torch.randint(0, 2, (batch,), generator=g),
    }


def real_flops(config: BertConfig, batch: dict) -> float:
    """Training FLOPs of the batch's real tokens, sequence by sequence."""
    masked = batch["pred_weights"].sum(1).tolist()
    lengths = batch["valid_lens"].tolist()
    return sum(flops_per_sequence(config, n, p) for n, p in zip(lengths, masked, strict=True))


def transformers_step(
    config: BertConfig, device: torch.device, precision: str, attention_dropout: float
) -> Callable[[dict], None]:
    """transformers' BertForPreTraining (SDPA) trained as scripts/bench.py trains it."""
    import transformers

    # the config `bertpretrain export` writes for ours, so both compute the same BERT
    fields = {**hf_config(config), "attention_probs_dropout_prob": attention_dropout}
    hf = transformers.BertConfig.from_dict(fields, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(hf).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step(batch: dict) -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**in_process.hf_inputs(batch)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_step_seconds(
    steps: dict[str, Callable[[dict], None]], batches: list[dict], reps: int, device
) -> dict[str, float]:
    """Seconds a step of each contender, median over `reps` interleaved repetitions."""
    for step in steps.values():
        for batch in batches[:WARMUP]:
            step(batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    timed = batches[WARMUP:]
    for _ in range(reps):
        for name, step in steps.items():
            sync(device)
            started = time.perf_counter()
            for batch in timed:
                step(batch)
            sync(device)
            times[name].append((time.perf_counter() - started) / len(timed))
    return {name: statistics.median(t) for name, t in times.items()}


def shape_rows(
    what: str, contenders: dict, batches: list[dict], config: BertConfig, peak: float, reps: int
) -> list[dict]:
    """Each contender's row on these batches; ours carries its speed-up over transformers."""
    device = batches[0]["tokens"].device
    batch_size, length = batches[0]["tokens"].shape
    flops = statistics.mean(real_flops(config, b) for b in batches)
    tokens = statistics.mean(float(b["valid_lens"].sum()) for b in batches)
    seconds = median_step_seconds(contenders, batches, reps, device)
    rows = []
    for name, step_s in seconds.items():
        print(
            f"{what}: {name} {step_s * 1e3:.1f} ms a step, MFU {flops / step_s / peak:.1%}",
            flush=True,
        )
        rows.append(
            {
                "what": what,
                "contender": name,
                "step_s": step_s,
                "seq_per_s": batch_size / step_s,
                "tokens_per_s": tokens / step_s,  # real tokens
                "real_token_share": tokens / (batch_size * length),
                "mfu": flops / step_s / peak,
            }
        )
    rows[0]["speedup"] = seconds["transformers"] / seconds["bertpretrain"]
    return rows


def run(
    size: str, shapes: list[tuple[int, int]], device: str, precision: str, steps: int, reps: int
) -> dict:
    """Every shape, full and with mixed lengths, for both contenders; and the targets."""
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = harness.matmul_peak(dtype, device)
    layers, hidden, heads, ffn, dropout = harness.SIZES[size]
    config = BertConfig(VOCAB, layers, hidden, heads, ffn, dropout)
    kernel = varlen_kernel(device, dtype, hidden // heads)
    path = attention_path(config, device, dtype)
    print(f"{precision} matmul peak {peak / 1e12:.1f} TFLOP/s; {path}", flush=True)
    # ours drops attention probabilities unless its kernel cannot: transformers the same
    attention_dropout = 0.0 if kernel is not None and not kernel.dropout else dropout
    contenders = {  # ours first: its row carries the speed-up
        "bertpretrain": in_process.ours(size, VOCAB, precision, device),
        "transformers": transformers_step(config, device, precision, attention_dropout),
    }
    g = torch.Generator().manual_seed(0)
    rows = []
    for length, batch_size in shapes:
        for fill, shortest in (("full", length), ("mixed lengths", length // 4)):
            batches = [
                {
                    k: v.to(device)
                    for k, v in synthetic_batch(length, batch_size, shortest, g).items()
                }
                for _ in range(WARMUP + steps)
            ]
            what = f"{size} L={length} B={batch_size} {precision}, {fill}"
            rows += shape_rows(what, contenders, batches, config, peak, reps)
    full_128 = [
        r for r in rows if r["what"].startswith("base L=128 ") and r["what"].endswith("full")
    ]
    targets = {}
    if full_128:
        ours = full_128[0]
        targets = {
            "base L=128 full: MFU >= 50%": ours["mfu"] >= 0.5,
            "base L=128 full: >= 2x transformers": ours["speedup"] >= 2,
        }
    return {
        "peak_tflops": peak / 1e12,
        "peak_dtype": precision,
        "attention_path": path,
        "attention_dropout": attention_dropout,
        "rows": rows,
        "targets": targets,
    }
