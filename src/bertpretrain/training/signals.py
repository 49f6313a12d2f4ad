"""Stopping on a signal: SIGINT/SIGTERM end the run after its step, with a checkpoint and
a line saying how to resume; exit code 128 + the signal's number, as a shell expects."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from bertpretrain.errors import Interrupted

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """SIGINT/SIGTERM only note the signal: the loop finishes its step, saves and stops.

    A second SIGINT while stopping interrupts at once (the user insists).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def note(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        # Nothing else here, logging included: the signal may land while the main thread is
        # inside a log handler's write to the same buffered file, and a second write from
        # the handler fails ("reentrant call"). The loop logs it after the step.
        received.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stopped(
    stop: list[int], step: int, path: Path | None, run_dir: Path, writer, complete: bool = False
) -> NoReturn:
    """Stop after a signal: say where the weights are and how to resume (or, `complete`,
    in the final validation, that there is nothing to resume), exit 128 + signal."""
    signum = stop[0] if stop else signal.SIGTERM
    name = signal.Signals(signum).name
    log.warning("received %s: stopping after step %d", name, step)
    if writer is not None:
        writer.close()
    where = f"; checkpoint {path}" if path is not None else ""
    if complete:  # a resume would be refused: max_steps is reached
        raise Interrupted(
            f"stopped by {name} in the final validation: training is complete (step {step}"
            f"{where}), only the final validation and summary.json are missing; encode and "
            "export take the checkpoint as it is",
            128 + signum,
        )
    raise Interrupted(
        f"stopped by {name} after step {step}{where}; to resume, rerun with "
        f"hydra.run.dir={run_dir} trainer.resume=true",
        128 + signum,
    )
