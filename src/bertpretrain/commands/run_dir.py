"""The run dir of one `train` run, fixed before Hydra starts.

Hydra names a run dir from the clock when its job starts (`${now:...}`) and creates it
then. `train` fixes the name once, from the precheck's config, so that
- under torchrun, rank 0 creates the dir and publishes it, and the other ranks wait until
  they see it (on a filesystem shared by several nodes it may show up late);
- a run refused inside the job leaves none of the folders it created: only empty ones,
  created by this process, are removed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from bertpretrain import distributed
from bertpretrain.commands.overrides import added, override
from bertpretrain.errors import UserError

SEEN_WITHIN_S = 120.0  # how long a rank waits to see the dir rank 0 created


def fixed(argv: list[str], overrides: list[str], run_dir: Path) -> list[str]:
    """argv (holding `overrides`) naming `run_dir` as the run dir, in place of any
    hydra.run.dir it had."""

    def kept(words: list[str]) -> list[str]:
        return [word for word in words if not word.startswith("hydra.run.dir=")]

    return added(kept(argv), kept(overrides), [override("hydra.run.dir", str(run_dir))])


def missing(run_dir: Path) -> list[Path]:
    """The run dir and those of its parents that do not exist yet, deepest first."""
    return [p for p in (run_dir, *run_dir.parents) if not p.exists()]


@contextlib.contextmanager
def removed_if_left_empty(created: list[Path]) -> Iterator[None]:
    """Remove the folders in `created` (deepest first) that a refused run left empty. An
    accepted run's dir holds its log, so nothing of it is touched; rmdir removes no file."""
    try:
        yield
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def for_all_ranks(run_dir: Path | None) -> tuple[Path, list[Path]]:
    """Under torchrun: rank 0's run dir (`run_dir` there), created by rank 0, once every
    rank sees it; and the folders this rank created (only rank 0 creates any)."""
    ranks = distributed.init_from_env()
    problem, created = "", []
    if ranks.main:
        created = missing(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problem = (
                f"cannot create the run dir {run_dir}: {e.strerror}; set "
                "hydra.run.dir=SOME/WRITABLE/PATH"
            )
    sent = json.dumps([problem, str(run_dir)]) if ranks.main else None
    problem, shared = json.loads(distributed.broadcast_str(sent))
    if problem:  # on every rank: none may wait in a collective for one that gave up
        raise UserError(problem)
    return _seen(Path(shared), ranks.rank), created


def _seen(run_dir: Path, rank: int) -> Path:
    deadline = time.monotonic() + SEEN_WITHIN_S
    while not run_dir.is_dir():
        if time.monotonic() > deadline:
            raise UserError(
                f"rank {rank} cannot see the run dir {run_dir} that rank 0 created "
                f"{SEEN_WITHIN_S:.0f} s ago; give every node a hydra.run.dir on a "
                "filesystem they share"
            )
        time.sleep(0.1)
    return run_dir
