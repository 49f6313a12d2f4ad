"""Writing files so that a crash, a kill or a full disk never leaves a torn or lost one.

`atomic_write` writes next to the target under a temp name, fsyncs and renames: readers see
the old file or the new one, never a part. The temp name carries the host and pid of its
writer, so `remove_orphans` can tell a write that a `kill -9` interrupted (its process is
gone) from one still in flight in another process that shares the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

HOST = os.uname().nodename.replace(".", "-")  # dots would blur the name's fields
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def temp_name(path: Path) -> Path:
    """A sibling of `path` that `remove_orphans` recognises: .NAME.HOST.PID.RANDOM.tmp"""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def failure(e: BaseException, folder: Path) -> str:
    """Why a write failed, in a few words (some libraries lose the errno of a full disk)."""
    full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
    with contextlib.suppress(OSError):
        full = full or shutil.disk_usage(folder).free < 1 << 20
    if full:
        return "the disk is full"
    lines = str(e).splitlines()
    return getattr(e, "strerror", None) or (lines[0] if lines else type(e).__name__)


def atomic_write(path: Path, write: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Create or replace `path` with what `write(f)` writes, all or nothing.

    Raises what the write raised; the temp file is gone either way.
    """
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; filesystems that cannot are left alone."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 1 << 22  # another user's live process; beyond pid_max, nobody's
    return True


def remove_orphans(folder: Path) -> None:
    """Delete temp files and folders in `folder` left by writers on this host that died."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            match = _TEMP.fullmatch(entry.name)
            if match and match["host"] == HOST and not _alive(int(match["pid"])):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
