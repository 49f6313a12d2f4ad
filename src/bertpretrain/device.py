"""Choosing the device to run on, shared by training and encoding."""

from __future__ import annotations

import functools
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
    """Whether bf16 matmuls run in hardware: on CUDA devices that support bf16, and on CPUs
    with AVX-512 BF16 or AMX. Elsewhere they are emulated, and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False  # Apple's MPS: bf16 support depends on the chip and the OS


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where /proc/cpuinfo is absent
    (torch's own capability string says AVX512 for CPUs with and without BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(setting: str, device_type: str) -> str:
    """speed.precision as a run uses it: `auto` is bf16 where bf16 is native (above), fp32
    elsewhere. Planning for a CUDA device that this machine lacks assumes a GPU of the last
    five years, which all compute bf16."""
    if setting != "auto":
        return setting
    if device_type == "cuda" and not torch.cuda.is_available():
        return "bf16"
    return "bf16" if bf16_is_native(torch.device(device_type)) else "fp32"
