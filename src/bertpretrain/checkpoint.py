"""Checkpoints: atomic writes, safe loads, and finding the newest one of a run.

A checkpoint is a dict of plain data and tensors (so `torch.load(weights_only=True)` reads
it and a crafted file cannot run code): the model's state dict, optimizer and scheduler
state, the step, every RNG state, the vocabulary and the resolved config.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from bertpretrain.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "bertpretrain-checkpoint/1"
SUBDIR = "checkpoints"


def path_for(run_dir: Path, step: int) -> Path:
    return run_dir / SUBDIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first (the zero-padded step sorts by name)."""
    return sorted((run_dir / SUBDIR).glob("step_*.pt"))


def save(state: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill at any moment
    leaves either the old file set or the new one, never a torn file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide checkpoints from the user's group
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        reason = _write_failure(e, path.parent)
        raise UserError(
            f"could not write checkpoint {path}: {reason}; free space or make the run dir "
            "writable (earlier checkpoints are intact)"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)


def _write_failure(e: Exception, folder: Path) -> str:
    if getattr(e, "errno", None) == errno.ENOSPC:
        return "the disk is full"
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < 1 << 20:
            return "the disk is full"
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


def fsync_dir(folder: Path) -> None:
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


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest checkpoints; also drop temp files of writes a kill interrupted
    (safe: the caller holds the run dir's lock, so no write is in flight)."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    for tmp in (run_dir / SUBDIR).glob(".step_*.tmp"):
        tmp.unlink(missing_ok=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run dir (its newest checkpoint)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = list_checkpoints(p)
        if not found:
            raise UserError(f"{p} holds no checkpoint (looked in {p / SUBDIR}); train one first")
        return found[-1]
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist; give a checkpoint file or a run dir")
    return p


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely; anything that is not one of ours is a clear user error."""
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a checkpoint (not a PyTorch zip file); give one written by "
            "`bertpretrain train`, or a run dir"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path} is not a safe bertpretrain checkpoint (it asks to run code or holds "
            f"foreign objects: {str(e).splitlines()[0][:160]}); refusing to load it"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(
            f"{path} is not a readable checkpoint (corrupt or truncated: {str(e).splitlines()[0][:120]}); "
            "use another checkpoint of the run"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a bertpretrain checkpoint; give one written by `bertpretrain train`"
        )
    return state


LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def lock_owner(run_dir: Path) -> int | None:
    """The pid of a live process holding run_dir's lock, if any."""
    try:
        owner = int((run_dir / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return owner if owner and owner != os.getpid() and _alive(owner) else None


def _in_use(run_dir: Path, owner: int) -> UserError:
    return UserError(
        f"run dir {run_dir} is in use by process {owner}; wait for it to finish or "
        "choose another hydra.run.dir"
    )


def check_not_in_use(run_dir: Path) -> None:
    """Refuse before Hydra writes its .hydra/ files into a live run's dir."""
    owner = lock_owner(run_dir)
    if owner:
        raise _in_use(run_dir, owner)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` (our pid) while training, so two processes never write one run.

    A lock whose process is gone (a killed run) is stale and taken over, so a resume after
    kill -9 is never blocked.
    """
    lock = run_dir / LOCK
    run_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock_owner(run_dir)
            if owner:
                raise _in_use(run_dir, owner) from None
            log.warning("taking over a stale lock in %s", run_dir)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
