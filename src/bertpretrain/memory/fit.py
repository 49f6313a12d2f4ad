"""What fits a memory budget: the accumulation a run takes (`choose_accum`, `for_run`),
and what to say when nothing fits or a run runs out of memory after all. The plans
themselves are memory/plan.py's.
"""

from __future__ import annotations

import logging
import os

import torch

from bertpretrain.device import bf16_is_native, resolve_precision
from bertpretrain.errors import UserError
from bertpretrain.memory.budget import device_memory, format_size, memory_budget
from bertpretrain.memory.plan import (
    DEFAULT_VOCAB,
    LARGEST_SEARCHED,
    MARGIN,
    Plan,
    Workload,
    make_plan,
    process_overhead,
)

log = logging.getLogger(__name__)


def choose_accum(
    work: Workload,
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
    trainer = work.trainer
    per_rank = trainer.batch_size // ranks
    auto = trainer.grad_accum == "auto"

    def plan_at(accum: int) -> Plan:
        return make_plan(work, vocab_size, fill, device, budget, ranks, accum, overhead)

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
        chosen = plan_at(trainer.grad_accum)
        if chosen.fits:
            return trainer.grad_accum, chosen
        if fitting is not None:
            raise UserError(
                f"trainer.grad_accum={trainer.grad_accum} (micro-batch {chosen.micro_batch}) "
                f"needs {format_size(chosen.total)} but {allowed}; trainer.grad_accum={fitting} "
                f"(micro-batch {per_rank // fitting}) fits and keeps trainer.batch_size="
                f"{trainer.batch_size}, and so does the default trainer.grad_accum=auto"
            )
    smallest = plan_at(per_rank)
    raise UserError(
        f"even a micro-batch of 1 needs {format_size(smallest.total)} but {allowed}; "
        f"{_what_fits(work, whole, device)}"
    )


def _what_fits(work: Workload, plan: Plan, device: str) -> str:
    ideas = []
    if not plan.checkpointing and plan.largest_checkpointed > 0:
        ideas.append("speed.gradient_checkpointing=true")
    if work.max_len > 128:
        ideas.append(f"a shorter data.max_len (now {work.max_len})")
    if resolve_precision(work.speed.precision, device) != "bf16" and (
        device == "cuda" or _bf16_native_cpu(device)
    ):
        ideas.append("speed.precision=bf16")
    ideas.append("a smaller model, or more memory")
    return "try " + ", or ".join(ideas)


def _bf16_native_cpu(device: str) -> bool:
    return device == "cpu" and bf16_is_native(torch.device("cpu"))


def oom_advice(work: Workload, device, vocab_size: int | None = None) -> str:
    """One line for a caught torch.OutOfMemoryError on `device`: what the plan says fits.

    The plan assumes every position a real token (fill 1.0) and, unless told (the
    configured WordPiece size), BERT's vocabulary.
    """
    vocab_size = vocab_size or DEFAULT_VOCAB
    device = torch.device(device)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun splits the batch over ranks too
    plan = make_plan(work, vocab_size, 1.0, device.type, device_memory(str(device)), ranks)
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


def for_run(work: Workload, dataset, device: torch.device, world: int) -> tuple[int, int]:
    """The accumulation a run trains with and the bytes it is planned to take.

    Planned once the data is built, so the real vocabulary and real-token fill are known
    and the process's own memory (the corpus included) is counted, and before the model
    exists: a config that cannot fit stops here, in one line, before anything large is
    allocated (on a CPU the kernel would kill the process without a word).
    """
    fill = float(dataset.train.valid_lens.mean()) / work.max_len
    budget, source = memory_budget(work.trainer, device)
    overhead = process_overhead(device.type)
    accum, chosen = choose_accum(
        work, len(dataset.vocab), fill, device.type, budget, source, world, overhead
    )
    log.info(
        "memory plan: %d micro-step(s) of %d sequences%s need %s; %s allows %s (real-token "
        "fill %.2f)",
        accum,
        chosen.micro_batch,
        " (trainer.grad_accum=auto)" if work.trainer.grad_accum == "auto" else "",
        format_size(chosen.total),
        source,
        format_size(MARGIN * budget),
        fill,
    )
    return accum, chosen.total
