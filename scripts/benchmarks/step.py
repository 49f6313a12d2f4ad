"""Our training step against transformers' BertForPreTraining (SDPA), each in a process of
its own, on the same real batches, sizes, optimizer (Adam, fused: our default and
transformers' Trainer's) and clipping: seq/s, model FLOPs utilisation against the matmul
peak, and each step's peak memory in a fresh process."""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from benchmarks.harness import SIZES, real_batches, sync
from bertpretrain.memory import allocator
from bertpretrain.model.bert import BertConfig, BertForPretraining, flops_per_sequence
from bertpretrain.training.optimize import PretrainingLosses, training_step


def ours(size: str, vocab: int, precision: str, device) -> Callable[[dict], None]:
    layers, hidden, heads, ffn, dropout = SIZES[size]
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(vocab, layers, hidden, heads, ffn, dropout)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def autocast():
        return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")

    losses = PretrainingLosses(model)

    def step(batch):
        training_step(losses, optimizer, [batch], autocast, 1.0)

    return step


def hf_inputs(batch: dict) -> dict:
    """Our batch as transformers wants it: labels -100 except at the real masked positions."""
    tokens = batch["tokens"]
    labels = torch.full_like(tokens, -100)
    real = batch["pred_weights"] > 0
    rows = torch.arange(len(tokens), device=tokens.device)[:, None].expand_as(real)
    labels[rows[real], batch["pred_positions"][real]] = batch["pred_labels"][real]
    keep = torch.arange(tokens.shape[1], device=tokens.device) < batch["valid_lens"][:, None]
    return {
        "input_ids": tokens,
        "token_type_ids": batch["segments"],
        "attention_mask": keep.long(),
        "labels": labels,
        "next_sentence_label": batch["nsp_labels"],
    }


def transformers_bert(size: str, vocab: int, precision: str, device) -> Callable[[dict], None]:
    import transformers

    layers, hidden, heads, ffn, dropout = SIZES[size]
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step(batch):
        inputs = hf_inputs(batch)
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


# Each contender runs in a process of its own and allocates as its users' processes do:
# ours under the malloc policy `bertpretrain train` sets on the CPU (memory/allocator.py),
# transformers under glibc's defaults. The policy is process-wide, and it speeds up
# transformers' step as well (its (B*L, V) logits are fresh mappings every step), so a
# third row gives transformers our policy too: how much of the gap is the allocator.
CONTENDERS = {
    "bertpretrain": (ours, True),
    "transformers": (transformers_bert, False),
    "transformers, bertpretrain's malloc policy": (transformers_bert, True),
}


def _contender(make, args, shape, device, keep) -> tuple[list[dict], Callable[[dict], None]]:
    """A child's real batches (max_len, batch, count) on `device` and its contender's step,
    under our malloc policy if `keep` (on a GPU, keep_freed_pages changes nothing)."""
    if keep:
        allocator.keep_freed_pages(device)
    batches = [{k: v.to(device) for k, v in b.items()} for b in real_batches(*shape)[0]]
    return batches, make(*args, device)


def _child(make, args, shape, device, keep, reps, queue) -> None:
    """Seconds a step of each of `reps` passes over the batches, after a warm-up pass."""
    batches, step = _contender(make, args, shape, device, keep)
    # warm-up on every batch: each packed shape's first step also creates its kernels
    # (oneDNN's bf16 primitives are made per shape), which a long run pays once
    for b in batches:
        step(b)
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for b in batches[1:]:
            step(b)
        sync(device)
        times.append((time.perf_counter() - t0) / (len(batches) - 1))
    queue.put(times)


def _peak_memory_child(make, args, shape, device, keep, queue) -> None:
    batches, step = _contender(make, args, (*shape, 2), device, keep)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for b in batches:
            step(b)
        torch.cuda.synchronize()
        queue.put(torch.cuda.max_memory_allocated())
        return
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * resource.getpagesize()
    for b in batches:
        step(b)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)


def in_child(target, *args):
    """target(*args, queue) in a fresh process, and what it put on the queue (spawned, not
    forked: a forked child deadlocks in an initialised OpenMP pool)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


def bench_training(
    size, max_len, batch_size, precision, reps, steps, device, peaks, memory: bool = True
) -> list[dict]:
    _, vocab, preds = real_batches(max_len, batch_size, 1)
    layers, hidden, heads, ffn, dropout = SIZES[size]
    flops = flops_per_sequence(BertConfig(vocab, layers, hidden, heads, ffn), max_len, preds)
    contenders = dict(CONTENDERS)
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers is not installed: measuring bertpretrain only", file=sys.stderr)
        contenders = {"bertpretrain": CONTENDERS["bertpretrain"]}
    peak = peaks[torch.bfloat16 if precision == "bf16" else torch.float32]
    args, shape = (size, vocab, precision), (max_len, batch_size)
    rows = []
    for name, (make, keep) in contenders.items():
        times = in_child(_child, make, args, (*shape, steps + 1), device, keep, reps)
        t = statistics.median(times)
        rows.append(
            {
                "what": f"train {size} L={max_len} B={batch_size} {precision}",
                "contender": name,
                "step_s": t,
                "seq_per_s": batch_size / t,
                "tokens_per_s": batch_size * max_len / t,
                "model_gflop_per_step": flops * batch_size / 1e9,
                "mfu": flops * batch_size / t / peak,
            }
        )
        if memory:
            bytes_ = in_child(_peak_memory_child, make, args, shape, device, keep)
            rows[-1]["peak_memory_mb"] = bytes_ / 2**20
    return rows
