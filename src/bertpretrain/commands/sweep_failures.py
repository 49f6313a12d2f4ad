"""A sweep survives a failing job: each failed job reports into a folder, and the sweep ends
with one line that lists them all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

FAILURES = "BERTPRETRAIN_SWEEP_FAILURES"  # the folder where a sweep's failing jobs report


@contextlib.contextmanager
def failure_reports(multirun: bool) -> Iterator[list[str]]:
    """A folder for a sweep's failed jobs to report into, whichever launcher runs them: in
    this process, in joblib's worker processes (which inherit the environment) or in SLURM
    jobs (on a shared filesystem, hence a folder here rather than in /tmp). Yields the
    list that holds the reports once the sweep is over."""
    reports: list[str] = []
    if not multirun:
        yield reports
        return
    try:
        folder = Path(tempfile.mkdtemp(prefix=".bertpretrain-sweep-", dir="."))
    except OSError:  # a read-only working directory: local launchers still reach /tmp
        folder = Path(tempfile.mkdtemp(prefix="bertpretrain-sweep-"))
    os.environ[FAILURES] = str(folder.absolute())
    try:
        yield reports
    finally:
        os.environ.pop(FAILURES, None)
        found = sorted(folder.glob("*.txt"), key=lambda p: int(p.stem))
        reports += [p.read_text(encoding="utf-8").strip() for p in found]
        shutil.rmtree(folder, ignore_errors=True)


def report_failure(job: int, message: str) -> None:
    """Job `job` failed with `message` (in a sweep; outside one there is no folder)."""
    folder = os.environ.get(FAILURES)
    if folder:
        (Path(folder) / f"{job}.txt").write_text(" ".join(message.split()), encoding="utf-8")
