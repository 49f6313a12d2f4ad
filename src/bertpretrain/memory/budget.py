"""The memory a run has and holds: the device's, the budget a run may plan for, this
process's resident and peak memory, and sizes written in binary units. The memory plan
(bertpretrain.plan) and `train` ask these; nothing here knows the model."""

from __future__ import annotations

import contextlib
import os
import resource
import sys

import torch

from bertpretrain.config import TrainerConfig
from bertpretrain.config_checks import parse_size as config_parse_size
from bertpretrain.errors import UserError


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
        _require_cuda(name)
        return torch.cuda.get_device_properties(torch.device(name).index or 0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(trainer: TrainerConfig, device: torch.device) -> tuple[int, str]:
    """The bytes a run on `device` may plan for, and where that figure comes from:
    trainer.memory_budget, or what the device has available now."""
    if trainer.memory_budget is not None:
        return config_parse_size(trainer.memory_budget, "trainer.memory_budget="), (
            f"trainer.memory_budget={trainer.memory_budget}"
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
        _require_cuda(device)
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        free = info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return free // local_ranks + resident_memory()


def _require_cuda(device: str | torch.device) -> None:
    """A plan for a GPU this machine lacks needs that GPU's memory from the user."""
    if not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={device} is not available here; give its memory with "
            "--device-memory SIZE, e.g. --device-memory 80GB"
        )


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


def format_size(n: float) -> str:
    """Bytes in binary units: 1.23 GiB, 45.6 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
