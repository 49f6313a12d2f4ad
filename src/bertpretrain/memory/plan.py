"""The memory a config needs on one device, planned before training: `train` takes its
accumulation from it (memory/fit.py's `choose_accum`), and `bertpretrain plan` prints it
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

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertpretrain.config import ModelConfig, OptimConfig, SpeedConfig, TrainerConfig
from bertpretrain.device import resolve_precision
from bertpretrain.errors import UserError
from bertpretrain.memory.activations import activation_bytes
from bertpretrain.memory.budget import device_memory, device_type, resident_memory
from bertpretrain.model.bert import BertConfig, BertForPretraining
from bertpretrain.model.cpu_attention import bucket_lengths

DEFAULT_VOCAB = 30522  # BERT's WordPiece vocabulary
LARGEST_SEARCHED = 1 << 20  # micro-batches beyond this are reported as "at least"
# What the process holds besides the model, a rough constant: the CUDA context and cuBLAS
# workspaces on a GPU; Python, torch's libraries and the tokenised corpus on the CPU.
OVERHEAD = {"cuda": 1 << 30, "cpu": 1 << 29, "mps": 1 << 29}
# What a CPU training process grows by after `train` has planned, besides the tensors the
# plan counts: the kernel libraries the first step loads, autograd's and OpenMP's threads
# (measured: 94 MiB at a micro-batch of 8, where the tensors are negligible).
CPU_RUNTIME_GROWTH = 96 << 20
# On the CPU, glibc's allocator keeps what a step frees in its heap for the next step (the
# step's few shapes make it reuse those blocks: docs/benchmarks.md), so from the second
# step on the peak resident memory holds, besides the live activations, the holes left
# between them: 0.2 to 0.6 of the activations over 3-step tiny runs at max_len 64 and 512,
# and up to 1.2 for two micro-batches of 32 at max_len 512, where the same run's peak
# varied by 18% between runs (2026-12-07). Rough, counted apart from the activations, and
# set high: a plan that under-states lets a run outgrow its budget.
CPU_HEAP_SLACK = 0.7
# oneDNN, which runs the CPU's bf16 matmuls, keeps a scratch buffer outside torch's tensors:
# 3.8 MiB at a tiny micro-batch of 32, then 6.9 to 8.6 MiB from 64 sequences up to a
# 4-layer, 256-wide model at max_len 128 (peak growth of a step with oneDNN on and off,
# 2026-12-07, torch 2.13). Counted at the top of that range.
ONEDNN_BF16_SCRATCH = 9 << 20
# ... and compiles and caches each bf16 matmul per shape, 0.6 to 0.7 MiB a shape however
# small (torch 2.13, 2026-12-07). The CPU's attention (model/cpu_attention.py) has four
# matmul shapes for each bucket length (q k^T; p v and its backward's ds k; p^T g and
# ds^T q; g v^T): once all lengths have come up, a run holds them all.
ONEDNN_BF16_KERNEL = 700 << 10
ATTENTION_MATMULS = 4
# The parts a run makes once, at its first steps, not every step (tests/test_plan.py)
ONCE_A_RUN = ("oneDNN's bf16 scratch", "oneDNN's bf16 attention kernels")
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
    slack: int = 0  # the allocator's holes between steps (CPU_HEAP_SLACK), beside activations
    largest: int = 0  # the largest micro-batch that fits without gradient checkpointing
    largest_checkpointed: int = 0  # ... and with it

    @property
    def activation_total(self) -> int:
        return sum(self.activations.values())

    @property
    def total(self) -> int:
        # optimizer.step() runs after backward has freed the activations
        peak = max(self.activation_total + self.slack, self.step_scratch)
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


@dataclass(frozen=True)
class Workload:
    """What a memory plan reads of a run's config, a slice per concern."""

    model: ModelConfig  # the architecture; its vocabulary is the plan's own input
    trainer: TrainerConfig  # the global batch, its accumulation and the device
    speed: SpeedConfig  # precision and gradient checkpointing
    optim: OptimConfig  # Adam's weight decay adds to the optimizer step's scratch
    max_len: int  # data.max_len


def configured_accum(trainer: TrainerConfig) -> int:
    """trainer.grad_accum's micro-steps, or 1 under auto."""
    return trainer.grad_accum if isinstance(trainer.grad_accum, int) else 1


def micro_batch_size(batch: int, ranks: int, accum: int) -> int:
    """Sequences per forward/backward on one device: the global `batch` over `ranks` x
    `accum` micro-steps (at least one, for a plan asked about an uneven split)."""
    return max(1, batch // (ranks * accum))


def check_split(batch: int, ranks: int, accum: int) -> None:
    """Refuse a global batch that does not split evenly into ranks x micro-steps."""
    if batch % (ranks * accum):
        raise UserError(
            f"trainer.batch_size={batch} does not split into {ranks} ranks x "
            f"{accum} micro-steps (trainer.grad_accum); use a multiple of {ranks * accum}"
        )


def make_plan(
    work: Workload,
    vocab_size: int = DEFAULT_VOCAB,
    fill: float = 1.0,
    device: str | None = None,
    memory: int | None = None,
    ranks: int = 1,
    accum: int | None = None,
    overhead: int | None = None,
) -> Plan:
    """The memory plan of `work`; device and memory default to trainer.device's, the
    accumulation to trainer.grad_accum's, the overhead to a rough constant (`train`
    passes what its process holds once the data is built)."""
    trainer, speed = work.trainer, work.speed
    kind = device or device_type(trainer.device)
    memory = device_memory(trainer.device) if memory is None else memory
    overhead = OVERHEAD.get(kind, OVERHEAD["cpu"]) if overhead is None else overhead
    arch = work.model.architecture(vocab_size)
    parameters = model_parameters(arch)
    count = sum(parameter.numel() for parameter in parameters)
    weights = sum(parameter.numel() * parameter.element_size() for parameter in parameters)
    # foreach Adam's temporaries: sqrt(exp_avg_sq), ...; weight decay adds wd * p to a copy
    # of the gradients
    decay = work.optim.name == "adam" and work.optim.weight_decay > 0
    # autocast's bf16 copies of the weights, saved by the matmuls that use them
    bf16 = resolve_precision(speed.precision, kind) == "bf16"
    copies = {"bf16 weight copies": count * torch.bfloat16.itemsize} if bf16 else {}
    if bf16 and kind == "cpu":
        copies["oneDNN's bf16 scratch"] = ONEDNN_BF16_SCRATCH
        if arch.dropout > 0:  # the attention of model/cpu_attention.py
            kernels = ATTENTION_MATMULS * bucket_lengths(work.max_len)
            copies["oneDNN's bf16 attention kernels"] = kernels * ONEDNN_BF16_KERNEL

    def plan_for(batch: int, checkpointing: bool) -> Plan:
        activations = activation_bytes(
            arch, work.max_len, speed.precision, batch, fill, kind, checkpointing
        )
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
            slack=int(CPU_HEAP_SLACK * sum(activations.values())) if kind == "cpu" else 0,
        )

    accum = configured_accum(trainer) if accum is None else accum
    plan = plan_for(
        micro_batch_size(trainer.batch_size, ranks, accum), speed.gradient_checkpointing
    )
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
