"""Resuming a run: its recorded config reused, its TensorBoard curve whole (kill -9 and
signals themselves: test_reliability.py)."""

from __future__ import annotations

import socket
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertpretrain.progress import open_writer


def test_a_resumes_event_file_sorts_after_the_killed_runs_and_the_curve_stays_whole(tmp_path):
    folder = tmp_path / "tensorboard"
    dead = open_writer(folder, purge_step=1)
    for step in range(1, 5):  # logged up to step 4, checkpointed at step 2, then killed
        dead.add_scalar("train/loss", float(step), step)
    dead.close()
    # The worst name the dead run's file can have: the resume's second, or a later one (a
    # clock stepped back), with a pid whose digits sort after any other.
    (written,) = folder.iterdir()
    later = int(time.time()) + 1
    written.rename(folder / f"events.out.tfevents.{later:010d}.{socket.gethostname()}.99999999.0")
    resumed = open_writer(folder, purge_step=3)
    for step in range(3, 7):
        resumed.add_scalar("train/loss", 10.0 + step, step)
    resumed.close()
    acc = EventAccumulator(str(folder))
    acc.Reload()
    curve = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert curve == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0), (6, 16.0)]
