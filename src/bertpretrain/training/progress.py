"""What a run reports as it goes: the progress bar on a terminal, a log line otherwise,
the training curves in TensorBoard, and the speed it keeps.

Losses are summed on the device over a window of steps and read back once per log line:
reading them every step would wait for the device every step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from bertpretrain import distributed

log = logging.getLogger("bertpretrain.train")


class Progress:
    """The window of steps since the last log line, and what every log line said. `names`
    name the losses a step gives, in order: ("mlm_loss", "nsp_loss") when pretraining."""

    def __init__(
        self,
        total: int,
        start: int,
        batch_size: int,
        writer: SummaryWriter | None,
        device,
        names: tuple[str, ...] = ("mlm_loss", "nsp_loss"),
    ):
        self.total, self.batch_size, self.writer, self.names = total, batch_size, writer, names
        self.interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            initial=start,
            disable=not (self.interactive and writer is not None),
            unit="step",
            dynamic_ncols=True,
        )
        self.window = torch.zeros(len(names), device=device)  # each loss, summed
        self.window_steps = 0
        self.window_start = time.perf_counter()
        self.last = dict.fromkeys(names, math.nan)
        self.speeds: list[float] = []  # seq/s of each log line's window

    def add(self, losses: torch.Tensor | None) -> None:
        """One step done: its losses (in the order of `names`), or None for a skipped step."""
        if losses is not None:
            self.window += losses
            self.window_steps += 1
        self.bar.update(1)

    def report(self, done: int, every: int, lr: float) -> None:
        """At every `every`-th step and the last: average the window over every rank, then
        log it (rank 0)."""
        if not self.window_steps or (done % every and done != self.total):
            return
        elapsed = time.perf_counter() - self.window_start
        values = (distributed.sum_over_ranks(self.window) / self.window_steps).tolist()
        seq_s = self.window_steps * self.batch_size / elapsed
        self.speeds.append(seq_s)
        self.last = dict(zip(self.names, values, strict=True))
        if self.writer is not None:
            total = {"loss": sum(values)} if len(values) > 1 else {}
            curves = self.last | total | {"lr": lr, "seq_per_s": seq_s}
            for name, value in curves.items():
                self.writer.add_scalar(f"train/{name}", value, done)
            shown = {short(name): f"{value:.3f}" for name, value in self.last.items()}
            self.bar.set_postfix(**shown, seq_s=f"{seq_s:.0f}")
            if not self.interactive:
                log.info(log_line(done, self.total, self.last, seq_s))
        self.window.zero_()
        self.window_steps = 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.window_start = time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent validating or saving is not training speed: the window's clock skips
        it, and the window's steps before it still count."""
        before = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - before

    def median_speed(self) -> float:
        return sorted(self.speeds)[len(self.speeds) // 2] if self.speeds else math.nan

    def close(self) -> None:
        self.bar.close()


_OPENED = re.compile(r"events\.out\.tfevents\.(\d+)\.")  # the second a file was opened


def open_writer(folder: Path, purge_step: int) -> SummaryWriter:
    """A TensorBoard writer whose event file sorts after every file already in `folder`.

    TensorBoard reads a run's event files in name order, and a name starts with the second
    it was opened, then the host and pid. A resume opened in the second its killed run
    opened would sort by pid, maybe first: its steps would read as the start and the dead
    run's as a restart, purging the curve after them. So wait for a later second (at most
    one, and only for a quick resume); `purge_step` drops what the dead run logged beyond
    its checkpoint.
    """
    opened = [
        int(m[1]) for p in folder.glob("events.out.tfevents.*") if (m := _OPENED.match(p.name))
    ]
    wait = max(opened, default=0) + 1 - time.time()
    if wait > 5:  # a file from a clock far ahead (another node's): waiting would not end soon
        log.warning("an event file in %s is from the future; the curve may be cut", folder)
    elif wait > 0:
        time.sleep(wait)
    return SummaryWriter(str(folder), purge_step=purge_step)


def log_line(step: int, max_steps: int, losses: dict[str, float], seq_s: float) -> str:
    """`step 10/50  mlm 7.1234  nsp 0.6931  812.0 seq/s`: each loss by its short name."""
    shown = "".join(f"  {short(name)} {value:.4f}" for name, value in losses.items())
    return f"step {step}/{max_steps}{shown}  {seq_s:.1f} seq/s"


def short(name: str) -> str:
    """A loss's name in a log line: mlm_loss -> mlm; a lone `loss` stays."""
    return name.removesuffix("_loss") or name


def write_hparams(writer: SummaryWriter, config: dict, metrics: dict, train: dict) -> None:
    """The run's config and outcome in TensorBoard's hparams view, to compare a sweep:
    `metrics` as val_*, `train` (a loss's name and last value) as train_*."""
    writer.add_hparams(
        flat_hparams(config),
        {f"hparam/val_{k}": v for k, v in metrics.items()}
        | {f"hparam/train_{k}": v for k, v in train.items()},
        run_name=".",
    )


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """The config as flat scalars, as TensorBoard's hparams view wants them."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_hparams(value, f"{name}.")
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        elif value is None:
            out[name] = "null"
        else:
            out[name] = str(value)
    return out
