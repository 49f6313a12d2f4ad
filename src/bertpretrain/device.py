"""Choosing the device to run on, shared by training and encoding."""

from __future__ import annotations

import logging

import torch

from bertpretrain.errors import UserError

log = logging.getLogger(__name__)


def pick_device(name: str, option: str = "trainer.device") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; anything else must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(
            f"{option}={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise UserError(f"{option}={name} is not available here; use {option}=cpu or auto")
    return device


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware; on an AVX2-only CPU they are emulated and slow."""
    if device.type != "cpu":
        return True
    return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2")
