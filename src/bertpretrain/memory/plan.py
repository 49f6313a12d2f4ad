"""The memory a config needs on one device, planned before training: `train` takes its
accumulation from it (`choose_accum`), and `bertpretrain plan` prints it
(bertpretrain.commands.plan).

Weights, gradients and Adam's two states are read off the model itself: the plan builds
BertForPretraining on the meta device (shapes and dtypes, no memory) and counts its
parameters' bytes, so a change to model/bert.py changes the plan by construction. Activations
cannot be read off the modules; memory/activations.py counts the tensors autograd
saves for backward, term by term. Two terms are rough on purpose and say so: backward's
own buffers and the runtime overhead. Gradients are counted as alive for the whole step,
as they are from the second micro-step of gradient accumulation on, so with
trainer.grad_accum=1 the total errs on the safe side.

How close it is, measured on the CPU: a real training step's activations came within 3%
of the estimate (tests/test_plan.py holds them within 10%), and a whole tiny run's peak
resident memory was 0.96 to 0.99 of its plan with the whole batch in one step; under
accumulation the plan over-stated it by 1.10 to 1.12 in some runs (tests/test_memory.py
holds the plan between 0.9 and 1.15 of the peak: it may err on the safe side, not the
other; docs/benchmarks.md measured 0.93 to 1.08 for tiny and base at max_len 64 and 512). The CUDA
attention path (SDPA's fused kernel, memory linear in L instead of the CPU path's (B,
heads, L, L) scores) is counted from what that kernel saves but is not measured here.

Two inputs are unknown before the data is built: the vocabulary (default BERT's 30522)
and the real-token fill. Every layer but attention works on the real tokens only, so
padding costs nothing there: WikiText-2 batches at max_len 64 are about 72% real tokens
and at 128 about 42%. A fill of 1.0 is the worst case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertpretrain.config import Config
from bertpretrain.device import bf16_is_native, resolve_precision
from bertpretrain.errors import UserError
from bertpretrain.memory.activations import activation_bytes
from bertpretrain.memory.budget import (
    device_memory,
    device_type,
    format_size,
    memory_budget,
    resident_memory,
)
from bertpretrain.model.bert import BertConfig, BertForPretraining

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
log = logging.getLogger(__name__)

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


def model_parameters(arch: BertConfig) -> list[torch.nn.Parameter]:
    """The trainable parameters of BertForPretraining(arch), built on the meta device:
    their shapes and dtypes without their memory (tied weights appear once)."""
    with torch.device("meta"):
        model = BertForPretraining(arch)
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def configured_accum(cfg: Config) -> int:
    """trainer.grad_accum's micro-steps, or 1 under auto."""
    return cfg.trainer.grad_accum if isinstance(cfg.trainer.grad_accum, int) else 1


def micro_batch(cfg: Config, ranks: int = 1, accum: int | None = None) -> int:
    """Sequences per forward/backward on one device: the batch over ranks x grad_accum
    (`accum` given, or trainer.grad_accum's)."""
    accum = configured_accum(cfg) if accum is None else accum
    return max(1, cfg.trainer.batch_size // (ranks * accum))


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
    overhead = OVERHEAD.get(kind, OVERHEAD["cpu"]) if overhead is None else overhead
    arch = cfg.model.architecture(vocab_size)
    parameters = model_parameters(arch)
    count = sum(parameter.numel() for parameter in parameters)
    weights = sum(parameter.numel() * parameter.element_size() for parameter in parameters)
    # foreach Adam's temporaries: sqrt(exp_avg_sq), ...; weight decay adds wd * p to a copy
    # of the gradients
    decay = cfg.optim.name == "adam" and cfg.optim.weight_decay > 0
    # autocast's bf16 copies of the weights, saved by the matmuls that use them
    bf16 = resolve_precision(cfg.speed.precision, kind) == "bf16"
    copies = {"bf16 weight copies": count * torch.bfloat16.itemsize} if bf16 else {}

    def plan_for(batch: int, checkpointing: bool) -> Plan:
        activations = activation_bytes(cfg, arch, batch, fill, kind, checkpointing)
        return Plan(
            params=count,
            micro_batch=batch,
            checkpointing=checkpointing,
            device=kind,
            device_memory=memory,
            weights=weights,
            gradients=weights,  # one per parameter, of its dtype
            optimizer=2 * weights,  # Adam's exp_avg and exp_avg_sq, each like the parameter
            step_scratch=(2 if decay else 1) * weights,
            activations={**activations, **copies},
            overhead=overhead,
        )

    plan = plan_for(micro_batch(cfg, ranks, accum), cfg.speed.gradient_checkpointing)
    plan.largest = _largest(lambda batch: plan_for(batch, False).fits)
    plan.largest_checkpointed = _largest(lambda batch: plan_for(batch, True).fits)
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


def process_overhead(device: str) -> int:
    """The overhead of a plan made inside the training process, once its data is built."""
    if device == "cpu":
        return resident_memory() + CPU_RUNTIME_GROWTH
    return OVERHEAD.get(device, OVERHEAD["cpu"])


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
    if resolve_precision(cfg.speed.precision, device) != "bf16" and (
        device == "cuda" or _bf16_native_cpu(device)
    ):
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
        said = f"the plan says the largest that fits is {format_count(plan.largest_checkpointed)} (with "
        said += "speed.gradient_checkpointing=true)"
    else:
        said = f"the plan says the largest that fits is {format_count(plan.largest)} "
        said += (
            f"({format_count(plan.largest_checkpointed)} with speed.gradient_checkpointing=true)"
        )
    return (
        f"out of memory at micro-batch {plan.micro_batch}: {said}; lower trainer.batch_size "
        "or raise trainer.grad_accum"
    )


def format_count(n: int) -> str:
    """A largest micro-batch as the plan reports it."""
    return "none" if n == 0 else f"{n} or more" if n >= LARGEST_SEARCHED else str(n)


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
