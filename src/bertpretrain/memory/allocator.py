"""glibc's malloc, told to keep the pages a CPU training step frees for the next step.

With glibc's defaults a block over the mmap threshold (128 KiB, rising with the blocks
freed up to 32 MiB) gets a mapping of its own that `free` unmaps, so every block over 32
MiB does (a tiny step's MLM logits and their gradient, attention's padded q, k, v); and
the heap hands what is freed at its top back to the kernel once 128 KiB sit there. The
next step asks for the same sizes again and faults every page back in: 70 to 90
thousand page faults a tiny fp32 step, 12 to 15% of its time (docs/benchmarks.md).
Training steps repeat the same few shapes (`attention.rounded_rows`), so the memory one
step frees is what the next one needs: malloc keeps it. Resident memory then holds the
heap's high-water mark: over a tiny run's first few hundred steps it rises by 12 to 15%,
as the heap meets each shape, and stays there.

`mallopt` at run time, not GLIBC_TUNABLES: the tunables are read only at process start,
and re-executing the command under them cost its start-up twice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's malloc.h: free memory at the heap's top kept, in bytes
M_MMAP_MAX = -4  # the most blocks given mappings of their own; 0: none, all from the heap
KEEP_AT_TOP = 2**31 - 1  # mallopt takes an int: the largest keeps up to 2 GiB


def keep_freed_pages(device: torch.device | None = None) -> bool:
    """For a run on `device` (None: the CPU), ask glibc to serve every block from its heap
    and keep the pages freed; False, changing nothing, for a GPU (the step's tensors are not
    malloc's) and where the C library is not glibc (macOS, musl)."""
    if device is not None and device.type != "cpu":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_AT_TOP) == 1
    if done:
        log.debug("malloc: every block from the heap, freed pages kept for the next step")
    return done
