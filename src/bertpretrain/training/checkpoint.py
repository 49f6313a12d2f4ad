"""Checkpoints: atomic writes, safe loads, and finding the newest one of a run.

A checkpoint is a dict of plain data and tensors (so `torch.load(weights_only=True)` reads
it and a crafted file cannot run code): the model's state dict, optimizer and scheduler
state, the step, every RNG state, the vocabulary and the resolved config.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bertpretrain import files
from bertpretrain.errors import UserError

if TYPE_CHECKING:
    from bertpretrain.config import Config

log = logging.getLogger(__name__)

FORMAT = "bertpretrain-checkpoint/1"
SUBDIR = "checkpoints"


_NAME = re.compile(r"step_(\d{8})\.pt")  # the only names the trainer writes, and prunes
_TEMP = re.compile(r"\.step_\d{8}\.pt\..+\.tmp")


def path_for(run_dir: Path, step: int) -> Path:
    return run_dir / SUBDIR / f"step_{step:08d}.pt"


def step_of(path: Path) -> int:
    """The step in a checkpoint's file name (path_for's inverse)."""
    return int(_NAME.fullmatch(path.name)[1])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first (the zero-padded step sorts by name). Only the
    exact names the trainer writes: a user's `step_00000002.backup.pt` is not one."""
    return sorted(p for p in (run_dir / SUBDIR).glob("step_*.pt") if _NAME.fullmatch(p.name))


def save(state: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill at any moment
    leaves either the old file set or the new one, never a torn file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        raise UserError(
            f"could not write checkpoint {path}: {files.failure(e, path.parent)}; free space "
            "or make the run dir writable (earlier checkpoints are intact)"
        ) from None


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest checkpoints; also drop temp files of writes a kill interrupted
    (safe: the caller holds the run dir's lock, so no write is in flight)."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    for tmp in (run_dir / SUBDIR).glob(".step_*.tmp"):
        if _TEMP.fullmatch(tmp.name):
            tmp.unlink(missing_ok=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, a run dir (its newest checkpoint) or a run's checkpoints/ folder
    (its newest)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = list_checkpoints(p) or sorted(
            q for q in p.glob("step_*.pt") if _NAME.fullmatch(q.name)
        )
        if not found:
            raise UserError(f"{p} holds no checkpoint (looked in {p / SUBDIR}); train one first")
        return found[-1]
    if p.is_symlink() and not p.exists():
        if _loops(p):
            raise UserError(f"{p} is a symlink loop; point it at a checkpoint file or a run dir")
        raise UserError(
            f"{p} is a dangling symlink (to {os.readlink(p)}, which does not exist); point it "
            "at a checkpoint file or a run dir"
        )
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist; give a checkpoint file or a run dir")
    return p


def _loops(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely; anything that is not one of ours is a clear user error."""
    if not path.is_file():  # /dev/null, /dev/zero, a fifo: torch would read them to no end
        raise UserError(
            f"{path} is not a checkpoint (not a regular file); give one written by "
            "`bertpretrain train`, or a run dir"
        )
    if not zipfile.is_zipfile(path):
        empty = "an empty file" if path.stat().st_size == 0 else "not a PyTorch zip file"
        raise UserError(
            f"{path} is not a checkpoint ({empty}); give one written by `bertpretrain train`, "
            "or a run dir"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path} is not a safe bertpretrain checkpoint (it asks to run code or holds "
            f"foreign objects: {_first_line(e, 160)}); refusing to load it"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(
            f"{path} is not a readable checkpoint (corrupt or truncated: {_first_line(e, 120)}); "
            "use another checkpoint of the run"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a bertpretrain checkpoint; give one written by `bertpretrain train`"
        )
    return state


def _first_line(error: BaseException, limit: int) -> str:
    """The start of an error's message; its type where it has none (EOFError)."""
    lines = str(error).splitlines()
    return lines[0][:limit] if lines else type(error).__name__


# What a resume may change besides the speed group (speed.*, none of which changes the
# recipe): logging, evaluation and saving, and where the corpus lies (its bytes are checked
# by their digest). The model's name is a label: its architecture is compared field by
# field. Every other setting changes the trained weights, so a resume that changes it
# would be a different run under this name.
FREE_ON_RESUME = frozenset(
    {
        "model.name",
        *(f"data.{k}" for k in ("root", "dir", "urls", "sha1", "cache", "name", "config")),
        *(f"data.{k}" for k in ("revision", "files", "train_split", "valid_split", "valid_files")),
        *(f"trainer.{k}" for k in ("max_steps", "grad_accum", "device", "resume")),
        *(f"trainer.{k}" for k in ("log_every", "eval_every", "eval_batches", "save_every")),
        *(f"trainer.{k}" for k in ("keep_last", "skip_nonfinite", "memory_budget")),
    }
)
FREE_GROUPS = ("speed.",)


def check_resume(path: Path, state: dict, config: dict) -> None:
    """Refuse a resume that would not continue the checkpoint's run: a changed setting
    that changes the results (each listed with its old and new value), or a max_steps the
    checkpoint has already reached."""
    saved, wanted = flat(state["config"]), flat(config)
    changed = [
        f"{key} {_shown(saved[key])} -> {_shown(value)}"
        for key, value in wanted.items()
        if key in saved and saved[key] != value and not _free(key)
    ]
    if changed:
        raise UserError(
            f"cannot resume {path}: {', '.join(changed)} would change the results of its "
            "run (a resume may change speed.*, trainer.max_steps and how it logs, evaluates "
            "and saves); drop that override, or start a new run in another hydra.run.dir"
        )
    max_steps, step = config["trainer"]["max_steps"], state["step"]
    if max_steps <= step:
        raise UserError(
            f"trainer.max_steps={max_steps} is not above the step of {path} (step {step}); "
            "raise trainer.max_steps to train further"
        )


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_state(cfg: Config, run_dir: Path) -> dict | None:
    """The checkpoint to continue, checked to continue the same run; None to start anew."""
    resume = cfg.trainer.resume
    if resume is False:
        return None
    if resume is True:
        found = list_checkpoints(run_dir)
        if not found:
            log.info(
                "trainer.resume=true but %s has no checkpoint yet: starting from step 0", run_dir
            )
            return None
        path = found[-1]
    else:
        path = resolve(resume)
    # here, not at the top: `encode` reads checkpoints and should not pay for omegaconf
    from bertpretrain.config import to_dict

    state = load(path)
    try:
        check_resume(path, state, to_dict(cfg))
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path} has no usable config or step ({type(e).__name__}: {e}); resume from a "
            "checkpoint written by `bertpretrain train`"
        ) from None
    log.info("resuming from %s (step %d)", path, state["step"])
    return state


def _free(key: str) -> bool:
    return key in FREE_ON_RESUME or key.startswith(FREE_GROUPS)


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config as {"group.key": value}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: object) -> str:
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


LOCK = ".lock"


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def lock_owner(run_dir: Path) -> int | str | None:
    """Who else holds run_dir's lock: its pid (or "another process" while it has not
    written it yet), None when nobody or this process does. The kernel drops a dead
    process's lock, so a lock file left by kill -9 holds nobody."""
    lock = run_dir / LOCK
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid_in(lock)
        return None if pid == os.getpid() else pid or "another process"
    except OSError:  # a filesystem without flock: nothing to learn from the file
        return None
    finally:
        os.close(fd)  # releases the shared lock taken to look
    return None


def _in_use(run_dir: Path, owner: int | str) -> UserError:
    who = f"process {owner}" if isinstance(owner, int) else owner
    return UserError(
        f"run dir {run_dir} is in use by {who}; wait for it to finish or "
        "choose another hydra.run.dir"
    )


def check_not_in_use(run_dir: Path) -> None:
    """Refuse before Hydra writes its .hydra/ files into a live run's dir."""
    owner = lock_owner(run_dir)
    if owner:
        raise _in_use(run_dir, owner)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `run_dir/.lock` (our pid inside) while training, so two
    processes never write one run.

    The kernel releases the lock when its process dies, kill -9 included, so a resume is
    never blocked by a dead run and two resumes racing for a dead run's lock cannot both
    win (a pid file with a staleness check could not promise that). A filesystem without
    flock (some Lustre mounts) gets a warning and no lock.
    """
    lock = run_dir / LOCK
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, run_dir)
    if fd is None:
        yield
        return
    if _pid_in(lock):
        log.warning("taking over the lock of a run that died in %s", run_dir)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: see the inode check in _acquire
        os.close(fd)


def _acquire(lock: Path, run_dir: Path) -> int | None:
    """An fd holding the exclusive flock on `lock`; None where the filesystem has no flock."""
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(run_dir, _pid_in(lock) or "another process") from None
        except OSError as e:
            os.close(fd)
            log.warning("cannot lock %s (%s): nothing stops a second run writing here", lock, e)
            return None
        try:  # the holder we waited on may have removed the file before we got its lock
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
