"""The memory a config needs on one device, planned before training: `bertpretrain plan`
prints it, and `train` takes its accumulation from it (`choose_accum`).

    bertpretrain plan model=large data.max_len=512 trainer.batch_size=32 --device-memory 80GB

Bytes are counted the way our own code spends them. Weights, gradients and Adam's two
states are fp32: 4 + 4 + 8 bytes a parameter. Activations are the tensors autograd saves
for backward in model.py's packed training path, summed layer by layer by dtype (fp32 4
bytes, bf16 2, a dropout mask 1); the comments in `activation_bytes` name each one. Two
terms are rough on purpose and say so: backward's own buffers (about two gradients of the
largest tensor alive at once) and the runtime overhead. Gradients are counted as alive
for the whole step, as they are from the second micro-step of gradient accumulation on,
so with trainer.grad_accum=1 the total errs on the safe side. tests/test_plan.py holds
the activation estimate against the peak memory of real training steps on the CPU (within
25%), and docs/benchmarks.md whole runs' plans against their peak (within 8%); the CUDA
attention path (SDPA's fused kernel, memory linear in L instead of the CPU path's (B,
heads, L, L) scores) is counted from what that kernel saves but is not measured here.

Two inputs are unknown before the data is built: the vocabulary (--vocab-size, default
BERT's 30522) and the real-token fill (--fill). Every layer but attention works on the
real tokens only, so padding costs nothing there: WikiText-2 batches at max_len 64 are
about 72% real tokens and at 128 about 42%. The default --fill 1.0 is the worst case.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertpretrain.config import Config
from bertpretrain.config_checks import parse_size as config_parse_size
from bertpretrain.data.examples import MASK_RATE
from bertpretrain.device import bf16_is_native
from bertpretrain.errors import ArgumentParser, UserError

DEFAULT_VOCAB = 30522  # BERT's WordPiece vocabulary
LARGEST_SEARCHED = 1 << 20  # micro-batches beyond this are reported as "at least"
# What the process holds besides the model, a rough constant: the CUDA context and cuBLAS
# workspaces on a GPU; Python, torch's libraries and the tokenised corpus on the CPU.
OVERHEAD = {"cuda": 1 << 30, "cpu": 1 << 29, "mps": 1 << 29}
# What a CPU training process grows by after `train` has planned, besides the tensors the
# plan counts: the kernel libraries the first step loads, autograd's and OpenMP's threads
# (measured: 94 MiB at a micro-batch of 8, where the tensors are negligible).
CPU_RUNTIME_GROWTH = 96 << 20
# The share of the memory a plan may fill: the rest is for the allocator's slack and for
# micro-batches with more real tokens than the mean.
MARGIN = 0.9

log = logging.getLogger(__name__)


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
    def fixed(self) -> int:
        """What the process holds before its first batch."""
        return self.weights + self.gradients + self.optimizer + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= MARGIN * self.device_memory


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
    a = 2 if cfg.speed.precision == "bf16" else 4  # bytes of a matmul output / Linear input
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
        parts[f"layer inputs: {m.num_layers} x {format_size(4 * t * h)}"] = m.num_layers * 4 * t * h
        if heads_ + head_peak > layer + layer_peak:
            parts["MLM and NSP heads, and their backward (rough)"] = heads_ + head_peak
        else:
            parts["one layer recomputed, and its backward (rough)"] = layer + layer_peak
    else:
        parts[f"layers: {m.num_layers} x {format_size(layer)}"] = m.num_layers * layer
        parts["MLM and NSP heads"] = heads_
        parts["backward buffers (rough)"] = max(head_peak, layer_peak)
    if a == 2:  # autocast's bf16 copies of the weights, saved by the matmuls that use them
        parts["bf16 weight copies"] = 2 * count_parameters(cfg, vocab_size)
    return parts


def micro_batch(cfg: Config, ranks: int = 1, accum: int | None = None) -> int:
    """Sequences per forward/backward on one device: the batch over ranks x grad_accum
    (`accum` given, or trainer.grad_accum; auto counts as 1 here)."""
    if accum is None:
        accum = cfg.trainer.grad_accum if isinstance(cfg.trainer.grad_accum, int) else 1
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
    accum: int | None = None,
    overhead: int | None = None,
) -> Plan:
    """The memory plan of `cfg`; device and memory default to trainer.device's, the
    accumulation to trainer.grad_accum's, the overhead to a rough constant (`train`
    passes what its process holds once the data is built)."""
    kind = device or device_type(cfg.trainer.device)
    memory = device_memory(cfg.trainer.device) if memory is None else memory
    params = count_parameters(cfg, vocab_size)
    decay = cfg.optim.name == "adam" and cfg.optim.weight_decay > 0  # adds wd * p to a grads copy
    checkpointing = cfg.speed.gradient_checkpointing

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
            overhead=OVERHEAD.get(kind, OVERHEAD["cpu"]) if overhead is None else overhead,
        )

    plan = plan_for(micro_batch(cfg, ranks, accum), checkpointing)
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


def memory_budget(cfg: Config, device: torch.device) -> tuple[int, str]:
    """The bytes a run on `device` may plan for, and where that figure comes from:
    trainer.memory_budget, or what the device has available now."""
    if cfg.trainer.memory_budget is not None:
        return config_parse_size(cfg.trainer.memory_budget, "trainer.memory_budget="), (
            f"trainer.memory_budget={cfg.trainer.memory_budget}"
        )
    if device.type == "cuda":
        return available_memory(device), "the GPU's free memory"
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # they share the RAM
    return available_memory(torch.device("cpu"), local_ranks), "the available RAM"


def available_memory(device: torch.device, local_ranks: int = 1) -> int:
    """What this process may use: the GPU's free memory plus what torch holds there, or on
    the CPU its share of the machine's available RAM plus what it already holds (plans
    count that as their overhead)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"trainer.device={device} is not available here; give its memory with "
                "--device-memory SIZE, e.g. --device-memory 80GB"
            )
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        free = info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return free // local_ranks + resident_memory()


def process_overhead(device: str) -> int:
    """The overhead of a plan made inside the training process, once its data is built."""
    if device == "cpu":
        return resident_memory() + CPU_RUNTIME_GROWTH
    return OVERHEAD.get(device, OVERHEAD["cpu"])


def peak_memory(device: torch.device | None = None) -> int:
    """What the run has held at most: the process's peak resident memory on the CPU (the
    figure the kernel's out-of-memory killer goes by), allocated tensors on CUDA."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec() from the process that
    # forked us, so a run started by a large parent (pytest, a notebook) would report it.
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )


def resident_memory() -> int:
    """This process's resident memory now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def choose_accum(
    cfg: Config,
    vocab_size: int,
    fill: float,
    device: str,
    budget: int,
    source: str,
    ranks: int = 1,
    overhead: int | None = None,
) -> tuple[int, Plan]:
    """The accumulation a run takes and its plan: trainer.grad_accum as given, or under
    auto the fewest micro-steps whose micro-batch fits, so that trainer.batch_size stays
    the recipe's global batch. A run that cannot fit is one UserError saying what it
    needs, what `source` (the budget's origin, for the message) allows, and what would fit.
    """
    per_rank = cfg.trainer.batch_size // ranks
    auto = cfg.trainer.grad_accum == "auto"

    def plan_at(accum: int) -> Plan:
        return make_plan(cfg, vocab_size, fill, device, budget, ranks, accum, overhead)

    allowed = (
        f"{source} allows {format_size(MARGIN * budget)} ({MARGIN:.0%} of {format_size(budget)})"
    )
    whole = plan_at(1)
    if whole.fixed > MARGIN * budget:
        raise UserError(
            f"{format_size(whole.fixed)} are needed before the first batch (weights, gradients "
            f"and Adam's state {format_size(whole.fixed - whole.overhead)}, the process "
            f"{format_size(whole.overhead)}) but {allowed}; use a smaller model, or more memory"
        )
    largest = whole.largest_checkpointed if whole.checkpointing else whole.largest
    fitting = next(
        (a for a in range(1, per_rank + 1) if per_rank % a == 0 and per_rank // a <= largest),
        None,
    )
    if auto and fitting is not None:
        return fitting, plan_at(fitting)
    if not auto:
        chosen = plan_at(cfg.trainer.grad_accum)
        if chosen.fits:
            return cfg.trainer.grad_accum, chosen
        if fitting is not None:
            raise UserError(
                f"trainer.grad_accum={cfg.trainer.grad_accum} (micro-batch {chosen.micro_batch}) "
                f"needs {format_size(chosen.total)} but {allowed}; trainer.grad_accum={fitting} "
                f"(micro-batch {per_rank // fitting}) fits and keeps trainer.batch_size="
                f"{cfg.trainer.batch_size}, and so does the default trainer.grad_accum=auto"
            )
    smallest = plan_at(per_rank)
    raise UserError(
        f"even a micro-batch of 1 needs {format_size(smallest.total)} but {allowed}; "
        f"{_what_fits(cfg, whole, device)}"
    )


def _what_fits(cfg: Config, plan: Plan, device: str) -> str:
    ideas = []
    if not plan.checkpointing and plan.largest_checkpointed > 0:
        ideas.append("speed.gradient_checkpointing=true")
    if cfg.data.max_len > 128:
        ideas.append(f"a shorter data.max_len (now {cfg.data.max_len})")
    if cfg.speed.precision != "bf16" and (device == "cuda" or _bf16_native_cpu(device)):
        ideas.append("speed.precision=bf16")
    ideas.append("a smaller model, or more memory")
    return "try " + ", or ".join(ideas)


def _bf16_native_cpu(device: str) -> bool:
    return device == "cpu" and bf16_is_native(torch.device("cpu"))


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
            f"the plan expected {format_size(plan.total)} of {format_size(plan.device_memory)} to fit, so "
            "something else holds memory (another process?)"
        )
    elif plan.checkpointing:
        said = f"the plan says the largest that fits is {_count(plan.largest_checkpointed)} (with "
        said += "speed.gradient_checkpointing=true)"
    else:
        said = f"the plan says the largest that fits is {_count(plan.largest)} "
        said += f"({_count(plan.largest_checkpointed)} with speed.gradient_checkpointing=true)"
    return (
        f"out of memory at micro-batch {plan.micro_batch}: {said}; lower trainer.batch_size "
        "or raise trainer.grad_accum"
    )


def parse_size(text: str) -> int:
    """Bytes from `80GB` (decimal), `80GiB` or `80G` (binary), or a plain number of bytes."""
    return config_parse_size(text, "--device-memory ")


def format_plan(
    cfg: Config,
    plan: Plan,
    accum: int,
    vocab_size: int,
    fill: float,
    ranks: int,
    source: str,
    refusal: str | None = None,
) -> str:
    """The plan as the command prints it: `accum` micro-steps as train would take them,
    `source` where the memory figure comes from, `refusal` train's one line if it would
    not start."""
    m, t = cfg.model, cfg.trainer
    split = f"trainer.batch_size={t.batch_size} / {accum} micro-steps (trainer.grad_accum={t.grad_accum})"
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
    memory = format_size(plan.device_memory)
    usage = f"{format_size(plan.total)} of {memory} ({100 * plan.total / plan.device_memory:.0f}%)"
    verdict = (
        f"does NOT fit: {refusal}" if refusal else f"fits: {usage}; a plan may fill {MARGIN:.0%}"
    )
    return "\n".join(
        [
            f"model={m.name}: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads, "
            f"FFN {m.ffn_size}; data.max_len={cfg.data.max_len}; speed.precision={cfg.speed.precision}",
            f"parameters: {plan.params / 1e6:.1f}M with {vocab}",
            f"micro-batch: {plan.micro_batch} sequences ({split}); gradient checkpointing "
            f"{'on' if plan.checkpointing else 'off'}",
            f"real-token fill: {fill:.2f} (--fill; 1.0 = no padding, the worst case; WikiText-2 "
            "batches are about 0.72 at max_len 64)",
            f"device: {plan.device} (trainer.device={t.device}), {memory} ({source}); {attention}",
            "",
            *[f"  {name:<52} {format_size(size):>12}" for name, size in rows],
            f"  {'total':<52} {format_size(plan.total):>12}",
            "",
            verdict,
            f"largest micro-batch that fits: {_count(plan.largest)} without gradient "
            f"checkpointing, {_count(plan.largest_checkpointed)} with "
            "speed.gradient_checkpointing=true",
        ]
    )


def _count(n: int) -> str:
    return "none" if n == 0 else f"{n} or more" if n >= LARGEST_SEARCHED else str(n)


def format_size(n: float) -> str:
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
        "speed.precision=bf16 --device-memory 80GB",
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
    if cfg.init:  # that model's architecture and vocabulary
        from bertpretrain import published

        args.vocab_size = args.vocab_size or published.adopt_architecture(cfg)[1].vocab_size
    if args.vocab_size is None:
        args.vocab_size = cfg.tokenizer.vocab_size or DEFAULT_VOCAB
    device = device_type(cfg.trainer.device)
    if args.device_memory is not None:
        budget, source = parse_size(args.device_memory), f"--device-memory {args.device_memory}"
    else:
        name = cfg.trainer.device
        budget, source = memory_budget(cfg, torch.device(device if name == "auto" else name))
    refusal = None
    try:
        accum, plan = choose_accum(
            cfg, args.vocab_size, args.fill, device, budget, source, args.ranks
        )
    except UserError as e:  # what train would refuse with, after the table
        accum = cfg.trainer.grad_accum if isinstance(cfg.trainer.grad_accum, int) else 1
        plan = make_plan(cfg, args.vocab_size, args.fill, device, budget, args.ranks, accum)
        refusal = str(e)
    print(format_plan(cfg, plan, accum, args.vocab_size, args.fill, args.ranks, source, refusal))


def for_run(cfg: Config, dataset, device: torch.device, world: int) -> tuple[int, int]:
    """The accumulation a run trains with and the bytes it is planned to take.

    Planned once the data is built, so the real vocabulary and real-token fill are known
    and the process's own memory (the corpus included) is counted, and before the model
    exists: a config that cannot fit stops here, in one line, before anything large is
    allocated (on a CPU the kernel would kill the process without a word).
    """
    fill = float(dataset.train.valid_lens.mean()) / cfg.data.max_len
    budget, source = memory_budget(cfg, device)
    overhead = process_overhead(device.type)
    accum, chosen = choose_accum(
        cfg, len(dataset.vocab), fill, device.type, budget, source, world, overhead
    )
    log.info(
        "memory plan: %d micro-step(s) of %d sequences%s need %s; %s allows %s (real-token "
        "fill %.2f)",
        accum,
        chosen.micro_batch,
        " (trainer.grad_accum=auto)" if cfg.trainer.grad_accum == "auto" else "",
        format_size(chosen.total),
        source,
        format_size(MARGIN * budget),
        fill,
    )
    return accum, chosen.total
