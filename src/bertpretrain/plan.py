"""The memory a config needs on one device, planned before training: `train` takes its
accumulation from it (`choose_accum`), and `bertpretrain plan` prints it
(bertpretrain.commands.plan).

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

Two inputs are unknown before the data is built: the vocabulary (default BERT's 30522)
and the real-token fill. Every layer but attention works on the real tokens only, so
padding costs nothing there: WikiText-2 batches at max_len 64 are about 72% real tokens
and at 128 about 42%. A fill of 1.0 is the worst case.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertpretrain.config import Config
from bertpretrain.config import parse_size as config_parse_size
from bertpretrain.data.examples import MASK_RATE
from bertpretrain.device import bf16_is_native
from bertpretrain.errors import UserError

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
        ideas.append("model.gradient_checkpointing=true")
    if cfg.data.max_len > 128:
        ideas.append(f"a shorter data.max_len (now {cfg.data.max_len})")
    if cfg.trainer.precision != "bf16" and (device == "cuda" or _bf16_native_cpu(device)):
        ideas.append("trainer.precision=bf16")
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
        said = f"the plan says the largest that fits is {format_count(plan.largest_checkpointed)} (with "
        said += "model.gradient_checkpointing=true)"
    else:
        said = f"the plan says the largest that fits is {format_count(plan.largest)} "
        said += (
            f"({format_count(plan.largest_checkpointed)} with model.gradient_checkpointing=true)"
        )
    return (
        f"out of memory at micro-batch {plan.micro_batch}: {said}; lower trainer.batch_size "
        "or raise trainer.grad_accum"
    )


def format_count(n: int) -> str:
    """A largest micro-batch as the plan reports it."""
    return "none" if n == 0 else f"{n} or more" if n >= LARGEST_SEARCHED else str(n)


def format_size(n: float) -> str:
    """Bytes in binary units: 1.23 GiB, 45.6 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
