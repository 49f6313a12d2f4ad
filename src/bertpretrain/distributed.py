"""Data-parallel training with torchrun: process group, shared run dir, agreed decisions.

`torchrun --nproc_per_node=N -m bertpretrain train ...` starts N copies of the CLI. They
join one process group (NCCL on GPU, gloo on CPU), agree on rank 0's run dir (Hydra's
time-stamped dirs would differ between ranks started a second apart), and agree on every
decision that changes control flow (stop on a signal, skip a non-finite step), so no rank
waits forever in a collective the others skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bertpretrain.errors import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank as torchrun set it, before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def init_from_env() -> Ranks:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/MASTER_ADDR/..."""
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("BERTPRETRAIN_DIST_BACKEND") != "gloo"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return ranks()


def ranks() -> Ranks:
    if not dist.is_initialized():
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_str(value: str | None) -> str:
    """Rank 0's value on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_on_rank_zero(check: Callable[[], None]) -> None:
    """Run a check that raises UserError on rank 0 only, and raise its error on every rank.

    For checks of shared files that rank 0 is about to write: the other ranks, reading
    them later, would see rank 0's own files.
    """
    if not dist.is_initialized():
        check()
        return
    message = ""
    if dist.get_rank() == 0:
        try:
            check()
        except UserError as e:
            message = str(e)
    message = broadcast_str(message)
    if message:
        raise UserError(message)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (a no-op outside torchrun)."""
    return any_rank_each([flag], device)[0]


def any_rank_each(flags: list[bool], device: torch.device) -> list[bool]:
    """any_rank of each flag, in one collective."""
    if not dist.is_initialized():
        return list(flags)
    raised = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(raised, op=dist.ReduceOp.MAX)
    return [bool(value) for value in raised.tolist()]


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def leave_together() -> None:
    """Wait, at the end of a run that succeeded, until every rank is there. Rank 0 goes on
    after the loop (final validation, predictions, summary) while the others are done: a
    rank that destroyed its gloo group and exited meanwhile aborted now and then
    ("terminate called without an active exception", one 2-rank run in a loaded suite).
    Not after an error: the others may be inside a collective the barrier would not
    match; torchrun stops them instead."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
