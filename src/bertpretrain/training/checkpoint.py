"""Checkpoints: atomic writes, safe loads, and finding the newest one of a run.

A checkpoint is a dict of plain data and tensors (so `torch.load(weights_only=True)` reads
it and a crafted file cannot run code): the model's state dict, optimizer and scheduler
state, the step, every RNG state, the vocabulary and the resolved config. What a resume
may change is training/resume.py's; who may write a run dir, training/rundir.py's.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from bertpretrain import files
from bertpretrain.errors import UserError

FORMAT = "bertpretrain-checkpoint/1"
SUBDIR = "checkpoints"


BEST = "best.pt"  # a fine-tuning run's best epoch's weights, kept when trainer.select=best
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


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
