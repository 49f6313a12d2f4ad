"""`bertpretrain train` restarts itself once with glibc's allocator bounded.

glibc's allocator serves freed tensors' memory from its heap once large blocks have
been freed (its mmap threshold adapts upwards), and training frees tensors of a new size
every step (the real-token count varies): the heap fragments, and the resident memory of
a tiny run grew from 1.1 GB to 10 GB over 1000 steps, far past the memory plan. A fixed
threshold gives every large tensor its own mapping, returned on free; huge pages keep
those mappings' page faults cheap. glibc reads these tunables only at start-up, hence
the re-exec; setting the threshold with mallopt() instead cost 27% of the tiny run's
speed against these settings' 12% (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import platform
import sys

MALLOC_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=131072"


def bounded_allocator() -> None:
    """Restart this process once under MALLOC_TUNABLES (see above); a GLIBC_TUNABLES of the
    user's own is kept as it is, and so is a process that is not a console script's."""
    if (
        "GLIBC_TUNABLES" in os.environ
        or not sys.platform.startswith("linux")
        or platform.libc_ver()[0] != "glibc"
        or not getattr(sys, "orig_argv", None)
    ):
        return
    os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
