"""Writing files and folders so that a crash, a kill or a full disk never leaves a torn or
lost one. Every write in the package that replaces something goes through here.

- `atomic_write`: a file, written next to the target under a temp name, fsynced and
  renamed: readers see the old file or the new one, never a part.
- `temp_folder` + `replace_folder` / `place_folder`: a folder, built next to its target
  and renamed into place whole. `replace_folder` swaps it with the folder already there in
  one step where the system can (Linux's renameat2), so a reader always finds one of the
  two; elsewhere it moves the old one aside and back if the rename fails.
- `replace_symlink`: a link, made under a temp name and renamed over the old one.

A temp name carries the host and pid of its writer, so `remove_orphans` can tell a write
that a `kill -9` interrupted (its process is gone) from one still in flight in another
process that shares the folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

HOST = os.uname().nodename.replace(".", "-")  # dots would blur the name's fields
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def temp_name(path: Path) -> Path:
    """A sibling of `path` that `remove_orphans` recognises: .NAME.HOST.PID.RANDOM.tmp"""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


DISK_FULL = "the disk is full"


def failure(e: BaseException, folder: Path) -> str:
    """Why a write failed, in a few words. Some libraries lose the errno of a full disk:
    only then is the free space a clue (/proc has none, and is not full)."""
    code = getattr(e, "errno", None)
    full = code == errno.ENOSPC or "No space left" in str(e)
    if code is None:
        with contextlib.suppress(OSError):
            full = full or shutil.disk_usage(folder).free < 1 << 20
    if full:
        return DISK_FULL
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


@contextlib.contextmanager
def temp_folder(path: Path) -> Iterator[Path]:
    """A new empty folder beside `path` (a `temp_name`), to build what will be put at `path`
    with `replace_folder` or `place_folder`; on the way out it is removed with whatever it
    still holds. Made with the umask's permissions, like any other folder."""
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, path: Path) -> None:
    """Put the finished folder `new` at `path`, replacing the folder there, if any, which is
    deleted once the new one is in. Either `path` ends up the new folder or, when this
    raises, it is left as it was. `new` is gone afterwards.

    Where the system can swap the two in one step, a reader of `path` finds the old folder
    or the new one at every moment; elsewhere `path` is missing for the moment between two
    renames, and the old folder is moved back if the second fails.
    """
    fsync_dir(new)
    if path.is_dir() and not path.is_symlink() and _exchange(new, path):
        fsync_dir(path.parent)
        shutil.rmtree(new, ignore_errors=True)  # after the swap it holds the old folder
        return
    old = None
    if path.is_dir() and not path.is_symlink():
        old = temp_name(path)
        os.rename(path, old)
    try:
        os.rename(new, path)
    except OSError:
        if old is not None:
            os.rename(old, path)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def place_folder(new: Path, path: Path, keep: Callable[[Path], bool]) -> bool:
    """Put the finished folder `new` at `path` unless a folder there passes `keep` (another
    process put a good one there first): then that one stays and `new` is deleted. A
    folder there that fails `keep` (damaged, incomplete) is replaced. True when `new` was
    put in place."""
    try:
        os.rename(new, path)  # fails when a folder with files is there
    except OSError:
        if not path.is_dir():
            raise
        if keep(path):
            shutil.rmtree(new, ignore_errors=True)
            return False
        replace_folder(new, path)
        return True
    fsync_dir(path.parent)
    return True


def replace_symlink(link: Path, target: Path | str, target_is_directory: bool = False) -> None:
    """Point `link` at `target` in one step: a reader finds the old link or the new one."""
    tmp = temp_name(link)
    try:
        tmp.symlink_to(target, target_is_directory=target_is_directory)
        os.replace(tmp, link)
    finally:
        tmp.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step with Linux's renameat2(RENAME_EXCHANGE). False
    where the C library, the kernel or the filesystem cannot (the caller renames instead);
    any other failure raises."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not glibc 2.28+, or not Linux
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


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
