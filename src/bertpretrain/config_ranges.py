"""The range of every number in the schema (config.py), in one table: what the code and
its libraries accept, checked before any work starts. A number outside its range would
otherwise fail late and far from its key (torch.manual_seed overflows past 64 bits, a
thread count of 100000 crashes OpenMP, a batch of 10^14 keeps the planner busy for hours).

A new numeric key gets its range here; tests/test_fuzz.py fails for a key without one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from bertpretrain.errors import UserError

STEPS = 1 << 40  # step counts: far beyond any run, well within torch's and numpy's int64
COUNT = (1 << 31) - 1  # counts a C int holds (word frequencies, batches, checkpoints)
BATCH = 1 << 20  # sequences per step: the memory plan searches micro-batches up to this


def cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Range:
    """[low, high] (or [low, high) with open_high); `high` may depend on the machine.
    `why` says what the bound protects, for the error line."""

    low: float
    high: float | Callable[[], float]
    why: str
    open_low: bool = False
    open_high: bool = False
    integer: bool = True

    def upper(self) -> float:
        return self.high() if callable(self.high) else self.high

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.upper() if self.open_high else value <= self.upper()
        return above and below

    def shown(self) -> str:
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"{left}{_number(self.low)}, {_number(self.upper())}{right}"


def _number(value: float) -> str:
    if isinstance(value, int) and value >= 1 << 20 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _real(low: float, high: float, why: str, **open_ends: bool) -> Range:
    return Range(low, high, why, integer=False, **open_ends)


# Every int and float key of the schema. A key that may be null (speed.threads,
# tokenizer.vocab_size) is checked when it is set.
RANGES: dict[str, Range] = {
    "model.num_layers": Range(1, 1024, "transformer layers"),
    "model.hidden_size": Range(1, 1 << 16, "the model's width"),
    "model.num_heads": Range(1, 1 << 12, "attention heads"),
    "model.ffn_size": Range(1, 1 << 18, "the feed-forward width"),
    "model.max_position": Range(5, 1 << 17, "positions: an input has at least 5 tokens"),
    "model.type_vocab_size": Range(2, 1024, "segment types: NSP uses segments 0 and 1"),
    "model.dropout": _real(0.0, 1.0, "a probability", open_high=True),
    "model.layer_norm_eps": _real(0.0, 1.0, "LayerNorm's epsilon", open_low=True),
    "data.max_len": Range(5, 1 << 17, "tokens per input: <cls> a <sep> b <sep> at least"),
    "data.min_freq": Range(1, COUNT, "a word's minimum count"),
    "data.short_seq_prob": _real(0.0, 1.0, "a probability"),
    "tokenizer.min_freq": Range(1, COUNT, "a word's minimum count"),
    "tokenizer.vocab_size": Range(6, 1 << 24, "the 5 reserved tokens and at least one word"),
    "optim.lr": _real(0.0, math.inf, "a learning rate", open_low=True, open_high=True),
    "optim.weight_decay": _real(0.0, math.inf, "a decay factor", open_high=True),
    "optim.eps": _real(0.0, math.inf, "Adam's epsilon", open_low=True, open_high=True),
    "optim.warmup_steps": Range(0, STEPS, "steps"),
    "optim.warmup_fraction": _real(0.0, 1.0, "a share of the steps, when warmup_steps is 0"),
    "optim.grad_clip": _real(0.0, math.inf, "a norm; 0 disables clipping", open_high=True),
    "trainer.max_steps": Range(1, STEPS, "steps"),
    "trainer.epochs": Range(1, COUNT, "passes over a task's train split (finetune)"),
    "trainer.batch_size": Range(1, BATCH, "sequences per step"),
    "trainer.seed": Range(0, (1 << 63) - 1, "torch and numpy take 64-bit seeds"),
    "trainer.log_every": Range(1, STEPS, "steps"),
    "trainer.eval_every": Range(0, STEPS, "steps; 0 = only at the end"),
    "trainer.eval_batches": Range(0, COUNT, "batches; 0 = the whole validation split"),
    "trainer.save_every": Range(0, STEPS, "steps; 0 = only at the end"),
    "trainer.keep_last": Range(1, COUNT, "checkpoints kept"),
    "trainer.skip_nonfinite": Range(0, STEPS, "steps with a NaN/inf loss to skip"),
    "speed.num_workers": Range(0, 256, "processes making batches; 0 = the loop's own"),
    "speed.threads": Range(1, cores, "CPU threads: at most this machine's cores"),
}


def check_ranges(settings: dict[str, object]) -> None:
    """Each `settings` key (dotted, as in RANGES) within its range."""
    for key, value in settings.items():
        check_value(key, value, RANGES[key])


def check_value(key: str, value: object, bounds: Range) -> None:
    """`value` within `bounds`: one UserError line naming `key` (a setting or a command's
    option), the value and the range otherwise. None means unset."""
    if value is None:
        return
    given = f"{key} {value!r}" if key.startswith("-") else f"{key}={value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{given} is not a number; use a value in {bounds.shown()}")
    if bounds.integer and not isinstance(value, int):
        raise UserError(f"{given} is not a whole number; use one in {bounds.shown()}")
    if not bounds.contains(value):
        raise UserError(f"{given} is out of range: use a value in {bounds.shown()} ({bounds.why})")
