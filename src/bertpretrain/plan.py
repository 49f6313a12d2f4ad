"""`bertpretrain plan`: the memory a config needs on one device, before training it.

    bertpretrain plan model=large data.max_len=512 trainer.batch_size=32 --device-memory 80GB

Bytes are counted the way our own code spends them. Weights, gradients and Adam's two
states are fp32: 4 + 4 + 8 bytes a parameter. Activations are the tensors autograd saves
for backward in model.py's packed training path, summed layer by layer by dtype (fp32 4
bytes, bf16 2, a dropout mask 1); the comments in `activation_bytes` name each one. Two
terms are rough on purpose and say so: backward's own buffers (about two gradients of the
largest tensor alive at once) and the runtime overhead. Gradients are counted as alive
for the whole step, as they are from the second micro-step of gradient accumulation on,
so with trainer.grad_accum=1 the total errs on the safe side. tests/test_plan.py holds
the estimate against the peak memory of real training steps on the CPU (within a few
percent there); the CUDA attention path (SDPA's fused kernel, memory linear in L instead
of the CPU path's (B, heads, L, L) scores) is counted from what that kernel saves but is
not measured by the tests.

Two inputs are unknown before the data is built: the vocabulary (--vocab-size, default
BERT's 30522) and the real-token fill (--fill). Every layer but attention works on the
real tokens only, so padding costs nothing there: WikiText-2 batches at max_len 64 are
about 72% real tokens and at 128 about 42%. The default --fill 1.0 is the worst case.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertpretrain.config import Config
from bertpretrain.data.examples import MASK_RATE
from bertpretrain.errors import ArgumentParser, UserError

DEFAULT_VOCAB = 30522  # BERT's WordPiece vocabulary
LARGEST_SEARCHED = 1 << 20  # micro-batches beyond this are reported as "at least"
# What the process holds besides the model, a rough constant: the CUDA context and cuBLAS
# workspaces on a GPU; Python, torch's libraries and the tokenised corpus on the CPU.
OVERHEAD = {"cuda": 1 << 30, "cpu": 1 << 29, "mps": 1 << 29}


@dataclass
class Plan:
    """Bytes on one device for one config; activations are for one micro-batch."""

    params: int
    micro_batch: int
    checkpointing: bool
    device: str  # cuda | cpu | mps: decides the attention path and the overhead
    device_memory: int
    weights: int
    gradients: int
    optimizer: int  # Adam's exp_avg and exp_avg_sq
    step_scratch: int  # foreach Adam's temporaries during optimizer.step()
    activations: dict[str, int]  # named parts, summed in `activation_total`
    overhead: int
    largest: int = 0  # the largest micro-batch that fits without gradient checkpointing
    largest_checkpointed: int = 0  # ... and with it

    @property
    def activation_total(self) -> int:
        return sum(self.activations.values())

    @property
    def total(self) -> int:
        # optimizer.step() runs after backward has freed the activations
        peak = max(self.activation_total, self.step_scratch)
        return self.weights + self.gradients + self.optimizer + peak + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.device_memory


def count_parameters(cfg: Config, vocab_size: int) -> int:
    """BertForPretraining's parameters in closed form (the tied MLM decoder counted once)."""
    m = cfg.model
    h, f = m.hidden_size, m.ffn_size
    embeddings = (vocab_size + m.max_position + 2) * h + 2 * h  # word, position, segment, LN
    layer = (3 * h * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
    heads = (h * h + h) + (h * h + h + 2 * h + vocab_size) + (2 * h + 2)  # pooler, MLM, NSP
    return embeddings + m.num_layers * layer + heads


def activation_bytes(
    cfg: Config, vocab_size: int, batch: int, fill: float, device: str, checkpointing: bool
) -> dict[str, int]:
    """What one training micro-batch adds on top of weights, gradients and optimizer state.

    Each term is a tensor autograd saves in model.py (BertForPretraining.losses, training
    mode). Under bf16 autocast matmul outputs are bf16 and each Linear saves a bf16 copy of
    its input, while the residual stream (the LayerNorm inputs) stays fp32; LayerNorm and
    softmax keep their input's dtype on the CPU and run in fp32 on CUDA.
    """
    m = cfg.model
    b, n = batch, cfg.data.max_len
    h, f, heads, v = m.hidden_size, m.ffn_size, m.num_heads, vocab_size
    padded = b * n  # attention works on every position, padding included
    t = math.ceil(fill * padded)  # real tokens: every other layer works on these alone
    p = max(b, round(MASK_RATE * t))  # masked positions: the MLM head runs on these alone
    a = 2 if cfg.trainer.precision == "bf16" else 4  # bytes of a matmul output / Linear input
    mask = 1 if m.dropout > 0 else 0  # a dropout mask is bool: 1 byte an element
    scores = b * heads * n * n  # (B, heads, L, L)
    # SDPA's fused kernels: on CUDA, and on the CPU without dropout (Layer.attention spells
    # attention out on the CPU only to draw the dropout mask cheaply)
    fused = device == "cuda" or m.dropout == 0

    if fused:  # F.scaled_dot_product_attention saves q, k, v, its output and the logsumexp
        attention = 3 * a * padded * h + a * padded * h + 4 * b * heads * n
    else:  # matmul's contiguous copies of the padded q, k, v, then the (B, heads, L, L) scores
        attention = 3 * a * padded * h + a * scores  # softmax output
        attention += mask * scores + (a * scores if mask else 0)  # dropout mask, dropped probs
    layer = (
        a * t * h  # layer input, saved by qkv
        + 3 * a * t * h  # qkv's output, saved by index_copy (its backward does expand_as(source))
        + attention
        + a * t * h  # attention output, saved by attention_output
        + 2 * (4 * t * h + 8 * t)  # the two LayerNorms' fp32 inputs (x + ...), mean and rstd
        + a * t * h  # the first LayerNorm's output, saved by intermediate
        + 2 * a * t * f  # intermediate's output, saved by GELU; GELU's, saved by output
        + 2 * mask * t * h  # dropout masks after attention_output and output
    )
    embeddings = (
        3 * 8 * t  # int64 word, position and segment ids, saved by the lookups
        + 4 * t * h  # fp32 sum of the three, saved by LayerNorm
        + 8 * t  # LayerNorm's mean and rstd
        + mask * t * h  # dropout mask
        + 8 * t  # Packing.index
        + padded  # Packing.keep (bool)
    )
    head_norm = 4 if device == "cuda" else a  # CUDA autocast runs LayerNorm in fp32
    heads_ = (
        8 * p  # int64 rows of the masked positions
        + 2 * a * p * h  # mlm_dense's input, GELU's input
        + head_norm * p * h  # mlm_LayerNorm's input (cast to fp32 on CUDA)
        + 8 * p  # its mean and rstd
        + a * p * h  # mlm_LayerNorm's output, saved by the decoder
        + 4 * p * v  # log-softmax of the fp32 logits, saved by cross-entropy
        + 8 * p  # labels
        + 3 * a * b * h  # pooler input, tanh output, NSP input
    )
    # Backward's own buffers, rough: it starts at the MLM head, where nll_loss and
    # log_softmax each make a (P, V) fp32 gradient while the saved log-softmax is alive and
    # the decoder makes the word embedding's (V, H) gradient; in a layer, about two
    # gradients of its largest tensor are alive at once.
    head_peak = 2 * 4 * p * v + 4 * v * h
    layer_peak = 2 * max(a * t * f, a * padded * h, 0 if fused else a * scores)
    parts = {"embeddings": embeddings}
    if checkpointing:
        # torch.utils.checkpoint keeps each layer's fp32 input; backward recomputes one layer
        # at a time, after the head's backward has freed what the head saved.
        parts[f"layer inputs: {m.num_layers} x {_size(4 * t * h)}"] = m.num_layers * 4 * t * h
        if heads_ + head_peak > layer + layer_peak:
            parts["MLM and NSP heads, and their backward (rough)"] = heads_ + head_peak
        else:
            parts["one layer recomputed, and its backward (rough)"] = layer + layer_peak
    else:
        parts[f"layers: {m.num_layers} x {_size(layer)}"] = m.num_layers * layer
        parts["MLM and NSP heads"] = heads_
        parts["backward buffers (rough)"] = max(head_peak, layer_peak)
    if a == 2:  # autocast's bf16 copies of the weights, saved by the matmuls that use them
        parts["bf16 weight copies"] = 2 * count_parameters(cfg, vocab_size)
    return parts


def micro_batch(cfg: Config, ranks: int = 1) -> int:
    """Sequences per forward/backward on one device: the batch over ranks x grad_accum."""
    accum = getattr(cfg.trainer, "grad_accum", 1)  # absent before gradient accumulation
    return max(1, cfg.trainer.batch_size // (ranks * accum))


def device_type(name: str) -> str:
    """cuda, mps or cpu: what trainer.device means here (`auto` as training resolves it)."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return name.split(":")[0]


def device_memory(name: str) -> int:
    """The memory of trainer.device: the GPU's, or the machine's RAM for cpu and mps."""
    if device_type(name) == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"trainer.device={name} is not available here; give its memory with "
                "--device-memory SIZE, e.g. --device-memory 80GB"
            )
        return torch.cuda.get_device_properties(torch.device(name).index or 0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def make_plan(
    cfg: Config,
    vocab_size: int = DEFAULT_VOCAB,
    fill: float = 1.0,
    device: str | None = None,
    memory: int | None = None,
    ranks: int = 1,
) -> Plan:
    """The memory plan of `cfg`; device and memory default to trainer.device's."""
    kind = device or device_type(cfg.trainer.device)
    memory = device_memory(cfg.trainer.device) if memory is None else memory
    params = count_parameters(cfg, vocab_size)
    decay = cfg.optim.name == "adam" and cfg.optim.weight_decay > 0  # adds wd * p to a grads copy
    checkpointing = bool(getattr(cfg.model, "gradient_checkpointing", False))

    def plan_for(batch: int, checkpointing: bool) -> Plan:
        return Plan(
            params=params,
            micro_batch=batch,
            checkpointing=checkpointing,
            device=kind,
            device_memory=memory,
            weights=4 * params,
            gradients=4 * params,
            optimizer=8 * params,
            step_scratch=(8 if decay else 4) * params,  # foreach Adam's sqrt(exp_avg_sq), ...
            activations=activation_bytes(cfg, vocab_size, batch, fill, kind, checkpointing),
            overhead=OVERHEAD.get(kind, OVERHEAD["cpu"]),
        )

    plan = plan_for(micro_batch(cfg, ranks), checkpointing)
    plan.largest = _largest(lambda b: plan_for(b, False).fits)
    plan.largest_checkpointed = _largest(lambda b: plan_for(b, True).fits)
    return plan


def _largest(fits: Callable[[int], bool]) -> int:
    """The largest n with fits(n), 0 if none (activations grow with n); capped."""
    if not fits(1):
        return 0
    lo = 1
    while lo < LARGEST_SEARCHED and fits(2 * lo):
        lo *= 2
    hi = 2 * lo  # fits(lo); fits(hi) is false or beyond the cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def oom_advice(cfg: Config, device, vocab_size: int | None = None) -> str:
    """One line for a caught torch.OutOfMemoryError on `device`: what the plan says fits.

    The plan assumes every position a real token (fill 1.0) and, unless told, the
    configured WordPiece size or BERT's vocabulary.
    """
    vocab_size = vocab_size or cfg.tokenizer.vocab_size or DEFAULT_VOCAB
    device = torch.device(device)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun splits the batch over ranks too
    plan = make_plan(cfg, vocab_size, 1.0, device.type, device_memory(str(device)), ranks)
    if plan.fits:
        said = (
            f"the plan expected {_size(plan.total)} of {_size(plan.device_memory)} to fit, so "
            "something else holds memory (another process?)"
        )
    elif plan.checkpointing:
        said = f"the plan says the largest that fits is {_count(plan.largest_checkpointed)} (with "
        said += "model.gradient_checkpointing=true)"
    else:
        said = f"the plan says the largest that fits is {_count(plan.largest)} "
        said += f"({_count(plan.largest_checkpointed)} with model.gradient_checkpointing=true)"
    return (
        f"out of memory at micro-batch {plan.micro_batch}: {said}; lower trainer.batch_size "
        "or raise trainer.grad_accum"
    )


def parse_size(text: str) -> int:
    """Bytes from `80GB` (decimal), `80GiB` or `80G` (binary), or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?b)?)?\s*", text, re.IGNORECASE)
    if not match:
        raise UserError(
            f"--device-memory {text!r} is not a size; use e.g. 80GB, 80GiB, 16G or a byte count"
        )
    number, prefix, unit = match.groups()
    if prefix is None:
        return int(float(number))
    power = "kmgt".index(prefix.lower()) + 1
    base = 1000 if unit is not None and unit.lower() == "b" else 1024
    return int(float(number) * base**power)


def _accum_hint(cfg: Config, plan: Plan, ranks: int) -> str:
    """The smallest trainer.grad_accum that keeps trainer.batch_size and fits, if any."""
    per_rank = cfg.trainer.batch_size // ranks
    for largest, extra in (
        (plan.largest, ""),
        (plan.largest_checkpointed, " model.gradient_checkpointing=true"),
    ):
        for accum in range(1, per_rank + 1):
            if per_rank % accum == 0 and 0 < per_rank // accum <= largest:
                return (
                    f"to keep trainer.batch_size={cfg.trainer.batch_size}: trainer.grad_accum="
                    f"{accum}{extra} (micro-batch {per_rank // accum})"
                )
    return ""


def format_plan(
    cfg: Config, plan: Plan, vocab_size: int, fill: float, ranks: int, given: str | None = None
) -> str:
    """The plan as the command prints it; `given` is --device-memory as typed."""
    m, t = cfg.model, cfg.trainer
    memory = _size(plan.device_memory)
    memory = f"{given} = {memory} (--device-memory)" if given else f"{memory} detected"
    accum = getattr(t, "grad_accum", 1)
    split = f"trainer.batch_size={t.batch_size} / trainer.grad_accum={accum}"
    split += f" / {ranks} ranks" if ranks > 1 else ""
    vocab = f"vocabulary {vocab_size}"
    if vocab_size == cfg.tokenizer.vocab_size:
        vocab += " (tokenizer.vocab_size)"
    elif vocab_size == DEFAULT_VOCAB:
        vocab += " (BERT's; WikiText-2's word vocabulary is known once the data is built: --vocab-size N)"
    attention = (
        "fused attention kernel (no (B, heads, L, L) scores)"
        if plan.device == "cuda" or m.dropout == 0
        else "attention materialises (B, heads, L, L) scores (on CUDA a fused kernel does not: "
        "plan for a GPU with trainer.device=cuda)"
    )
    rows = [
        ("weights (fp32)", plan.weights),
        ("gradients (fp32)", plan.gradients),
        ("optimizer state (Adam: 2 x fp32)", plan.optimizer),
        (f"activations for a micro-batch of {plan.micro_batch}", plan.activation_total),
        *[(f"  {name}", size) for name, size in plan.activations.items()],
    ]
    if plan.step_scratch > plan.activation_total:
        rows.append(("optimizer.step() scratch (instead of activations)", plan.step_scratch))
    rows.append(("runtime overhead (rough)", plan.overhead))
    verdict = "fits" if plan.fits else "does NOT fit"
    percent = 100 * plan.total / plan.device_memory
    lines = [
        f"model={m.name}: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads, "
        f"FFN {m.ffn_size}; data.max_len={cfg.data.max_len}; trainer.precision={t.precision}",
        f"parameters: {plan.params / 1e6:.1f}M with {vocab}",
        f"micro-batch: {plan.micro_batch} sequences ({split}); gradient checkpointing "
        f"{'on' if plan.checkpointing else 'off'}",
        f"real-token fill: {fill:.2f} (--fill; 1.0 = no padding, the worst case; WikiText-2 "
        "batches are about 0.72 at max_len 64)",
        f"device: {plan.device} (trainer.device={t.device}), {memory}; {attention}",
        "",
        *[f"  {name:<52} {_size(size):>12}" for name, size in rows],
        f"  {'total':<52} {_size(plan.total):>12}",
        "",
        f"{verdict}: {_size(plan.total)} of {_size(plan.device_memory)} ({percent:.0f}%)",
        f"largest micro-batch that fits: {_count(plan.largest)} without gradient checkpointing, "
        f"{_count(plan.largest_checkpointed)} with model.gradient_checkpointing=true",
    ]
    if not plan.fits:
        hint = _accum_hint(cfg, plan, ranks)
        lines += [hint] if hint else []
    return "\n".join(lines)


def _count(n: int) -> str:
    return "none" if n == 0 else f"{n} or more" if n >= LARGEST_SEARCHED else str(n)


def _size(n: float) -> str:
    """Bytes in binary units: 1.23 GiB, 45.6 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bertpretrain plan",
        description="The memory a training config needs on one device, without training: "
        "parameters, weights, gradients, Adam's state, activations per micro-batch, whether "
        "it fits and the largest micro-batch that does.",
        epilog="example: bertpretrain plan model=large data.max_len=512 trainer.batch_size=32 "
        "trainer.precision=bf16 --device-memory 80GB",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides, as for train"
    )
    p.add_argument(
        "--device-memory",
        metavar="SIZE",
        help="the device's memory: 80GB (decimal), 80GiB or 80G (binary), or bytes; "
        "default: the GPU's of trainer.device, or this machine's RAM on the CPU",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        help="vocabulary size (default: tokenizer.vocab_size for tokenizer=wordpiece, else "
        f"{DEFAULT_VOCAB}, BERT's; the training log prints a word vocabulary's once the data "
        "is built)",
    )
    p.add_argument(
        "--fill",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of positions that are real tokens, not padding (default: 1.0, the "
        "worst case; WikiText-2 is about 0.72 at data.max_len=64)",
    )
    p.add_argument(
        "--ranks",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes (torchrun) sharing trainer.batch_size (default: 1)",
    )
    return p


def compose_config(overrides: list[str]) -> Config:
    """The typed config `bertpretrain train OVERRIDES` would run, composed without a run dir."""
    from bertpretrain.config import compose

    return compose(overrides)[0]


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if not 0 < args.fill <= 1:
        raise UserError(f"--fill {args.fill} must be in (0, 1], e.g. --fill 0.72")
    if (args.vocab_size is not None and args.vocab_size < 1) or args.ranks < 1:
        raise UserError("--vocab-size and --ranks must be positive integers")
    cfg = compose_config(args.overrides)
    if args.vocab_size is None:
        args.vocab_size = cfg.tokenizer.vocab_size or DEFAULT_VOCAB
    memory = None if args.device_memory is None else parse_size(args.device_memory)
    plan = make_plan(cfg, args.vocab_size, args.fill, memory=memory, ranks=args.ranks)
    print(format_plan(cfg, plan, args.vocab_size, args.fill, args.ranks, args.device_memory))
