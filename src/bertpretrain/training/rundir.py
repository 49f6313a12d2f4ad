"""A run dir: the layout a run writes, and the rules that keep one run per dir.

    RUN_DIR/
      .lock                   held while a process trains here (run_lock)
      .hydra/                 config.yaml, hydra.yaml, overrides.yaml (written by the CLI)
      train.log               the log
      tensorboard/            the curves
      checkpoints/step_*.pt   checkpoint.SUBDIR
      summary.json            the outcome, written when the run completes
    outputs/latest            a link to the newest run under ./outputs (`encode`'s default)

Nothing is written here before the lock is held, and a run that is refused (another
run's dir, a resume that would change the recipe or the corpus) writes nothing at all
but its reason in the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import logging.handlers
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from bertpretrain import files
from bertpretrain.errors import UserError
from bertpretrain.training import checkpoint

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
LATEST = "latest"  # outputs/latest: a link to the newest run under ./outputs
LOG = "train.log"
RECORD = ".hydra"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's own
LOCK = ".lock"


def evidence(run_dir: Path) -> str | None:
    """What shows that `run_dir` already holds a run; None for a new or empty dir."""
    if checkpoint.list_checkpoints(run_dir):
        return checkpoint.SUBDIR
    for name in (SUMMARY, f"{RECORD}/config.yaml"):
        if (run_dir / name).exists():
            return name
    return None


def check_new_run(run_dir: Path, resume: bool | str) -> None:
    """A new run starts only in a dir that holds none; a resume only continues its own dir.

    `trainer.resume=true` with no checkpoint yet starts from step 0 (a requeued job that
    died before its first save), but never over a finished run's summary.
    """
    found = evidence(run_dir)
    if found is None:
        return
    if resume is True and found != SUMMARY:
        return
    # realpath, not Path.resolve: a symlink loop given as trainer.resume raises there
    if (
        isinstance(resume, str)
        and Path(os.path.realpath(run_dir)) in Path(os.path.realpath(resume)).parents
    ):
        return  # a checkpoint of this very run
    if resume is not False:  # asked to resume, but there is nothing of this run to continue
        raise UserError(
            f"run dir {run_dir} already holds a run ({found}) but no checkpoint to resume from "
            f"(in {run_dir / checkpoint.SUBDIR}); choose another hydra.run.dir for a new run"
        )
    raise UserError(
        f"run dir {run_dir} already holds a run ({found}); pass trainer.resume=true to "
        "continue that run, or choose another hydra.run.dir for a new one"
    )


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


@contextlib.contextmanager
def log_file(run_dir: Path, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Keep the log in memory until the run is accepted, then write it, and everything
    after, to RUN_DIR/train.log. Yields `accept`; a run refused before it leaves the file
    alone (it may be another run's log)."""
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # a notebook's default WARNING would drop the progress
    pending = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
    written: list[logging.Handler] = []

    def accept() -> None:
        if not enabled or written:
            return
        handler = logging.FileHandler(run_dir / LOG, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        pending.setTarget(handler)
        pending.flush()
        root.removeHandler(pending)
        root.addHandler(handler)
        written.append(handler)

    if enabled:
        root.addHandler(pending)
    try:
        yield accept
    finally:
        root.removeHandler(pending)
        pending.close()
        for handler in written:
            root.removeHandler(handler)
            handler.close()


def write_summary(run_dir: Path, summary: dict) -> None:
    """The run's outcome, for `bertpretrain runs` and scripts, without reading event files."""
    text = json.dumps(summary, indent=1) + "\n"
    files.atomic_write(run_dir / SUMMARY, lambda f: f.write(text.encode()))


def update_latest(run_dir: Path) -> None:
    """Point `outputs/latest` at this run when it lives under ./outputs, for `encode`."""
    outputs = Path("outputs").resolve()
    try:
        target = run_dir.resolve().relative_to(outputs)
    except ValueError:
        return
    with contextlib.suppress(OSError):  # a missing link costs `encode outputs/latest` only
        files.replace_symlink(outputs / LATEST, target, target_is_directory=True)


def done_line(summary: dict) -> str:
    """The log's last line: what the run reached and where its results are."""
    from bertpretrain.memory.budget import format_size

    val = (
        f", val mlm {summary['val_mlm_loss']:.3f} (acc {summary['val_mlm_acc']:.3f}) "
        f"nsp {summary['val_nsp_loss']:.3f} (acc {summary['val_nsp_acc']:.3f})"
        if "val_mlm_loss" in summary
        else ""
    )
    return (
        f"done: {summary['steps']} steps, mlm {summary['train_mlm_loss']:.3f} nsp "
        f"{summary['train_nsp_loss']:.3f}{val}, {summary['seq_per_s']:.1f} seq/s "
        f"({summary['model_tflops']:.3f} model TFLOP/s), peak memory "
        f"{format_size(summary['peak_memory'])} (planned {format_size(summary['planned_memory'])}); "
        f"checkpoint {summary['checkpoint']}; curves: tensorboard --logdir {summary['tensorboard']}"
    )
