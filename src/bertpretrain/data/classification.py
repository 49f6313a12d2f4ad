"""A task's texts as model inputs: tokenised once, batched per step for fine-tuning.

Each example is `<cls> a <sep>` (segment 0) then `b <sep>` (segment 1) for a pair, cut to
max_len as BERT cuts it: a token at a time off the end of the longer text, b's on a tie
(encode.py's `_fit`). A split is tokenised with one `encode_sentences` call per column and
kept as one flat token array with offsets: no padding is stored, and a batch pads only to
its longest example (rounded up to a multiple of 16, so a run sees few shapes).

Training batches follow data/batches.py's rule: batch `step` is a pure function of (seed,
step), so a resumed run sees exactly the batches it would have, and a rank takes its
contiguous 1/world share of the global batch. Unlike pretraining, an epoch drops its last
partial batch (google-research/bert's run_classifier does), so every batch has B examples
and no example is seen twice in one epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bertpretrain.data.pairing import ragged
from bertpretrain.data.task_splits import Split
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import CLS_ID, PAD_ID, SEP_ID
from bertpretrain.errors import UserError

Batch = dict[str, torch.Tensor]
WIDTH_STEP = 16  # batch widths are multiples of this (or max_len)


@dataclass
class Encoded:
    """One split's inputs: every example's ids back to back, `<cls>` and `<sep>`s included."""

    tokens: np.ndarray  # (T,) int32, example i at offsets[i]:offsets[i + 1]
    offsets: np.ndarray  # (N + 1,) int64
    first_lens: np.ndarray  # (N,) int64: the length of `<cls> a <sep>`, segment 0
    labels: np.ndarray | None  # (N,) int64 class ids or float32 scores; None: unlabelled
    max_len: int
    truncated: int  # examples cut to fit max_len

    def __len__(self) -> int:
        return len(self.first_lens)

    @property
    def valid_lens(self) -> np.ndarray:
        """(N,) int64: each example's length, `<cls>` and `<sep>`s included."""
        return np.diff(self.offsets)


def encode_split(split: Split, tokenizer: Tokenizer, max_len: int) -> Encoded:
    """The split tokenised, wrapped and cut to `max_len`; a text with no tokens stays (as
    `<cls> <sep>`): dropping it would silently change a dev set's size."""
    pair = split.text_b is not None
    specials = 3 if pair else 2
    if max_len < specials:
        raise UserError(
            f"data.max_len={max_len} leaves no room for <cls> and the <sep>s; use at least 16"
        )
    ids_a, lens_a = tokenizer.encode_sentences(split.text_a)
    if pair:
        ids_b, lens_b = tokenizer.encode_sentences(split.text_b)
    else:
        ids_b, lens_b = np.zeros(0, np.int32), np.zeros(len(lens_a), np.int64)
    keep_a, keep_b = fit_lengths(lens_a, lens_b, max_len - specials)
    first = keep_a + 2  # <cls> a <sep>
    valid = first + (keep_b + 1 if pair else 0)
    offsets = np.concatenate([[0], np.cumsum(valid)])
    starts = offsets[:-1]
    tokens = np.full(int(offsets[-1]), SEP_ID, dtype=np.int32)  # every gap left is a <sep>
    tokens[starts] = CLS_ID
    _place(tokens, starts + 1, ids_a, lens_a, keep_a)
    _place(tokens, starts + first, ids_b, lens_b, keep_b)
    cut = (keep_a < lens_a) | (keep_b < lens_b)
    return Encoded(tokens, offsets, first, split.labels, max_len, int(cut.sum()))


def fit_lengths(
    lens_a: np.ndarray, lens_b: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """How many tokens of a and b to keep so that they fit `budget`, as popping one token
    at a time off the longer text (b on a tie) leaves them: the shorter one whole if the
    longer can fit beside it, else half each, a the extra one on an odd budget. (b's
    lengths are all 0 for single texts.)"""
    lens_a, lens_b = np.asarray(lens_a, np.int64), np.asarray(lens_b, np.int64)
    short = np.minimum(lens_a, lens_b)
    a_longer = lens_a > lens_b
    # The longer text is cut to what the shorter leaves, if that is not below the shorter.
    long_kept = np.minimum(np.maximum(lens_a, lens_b), budget - short)
    keep_a = np.where(a_longer, long_kept, short)
    keep_b = np.where(a_longer, short, long_kept)
    halves = budget - short < short  # both cut: they meet in the middle
    keep_a = np.where(halves, (budget + 1) // 2, keep_a)
    keep_b = np.where(halves, budget // 2, keep_b)
    return keep_a, keep_b


def _place(
    tokens: np.ndarray, at: np.ndarray, ids: np.ndarray, lens: np.ndarray, keep: np.ndarray
) -> None:
    """Copy the first keep[i] of sentence i's ids (of `ids`, `lens` each) to tokens[at[i]:]."""
    row, offset = ragged(keep)
    first = np.cumsum(lens) - lens  # of each sentence in `ids`
    tokens[at[row] + offset] = ids[first[row] + offset]


def _batch(encoded: Encoded, indices: np.ndarray) -> Batch:
    """Examples `indices` padded to the width of `width_of`, as the model's tensors."""
    return _padded(encoded, indices, width_of(encoded.valid_lens[indices], encoded.max_len))


def width_of(valid_lens: np.ndarray, max_len: int) -> int:
    """The longest length rounded up to a multiple of WIDTH_STEP, at most max_len."""
    longest = int(valid_lens.max(initial=1))
    return min(-(-longest // WIDTH_STEP) * WIDTH_STEP, max_len)


def _padded(encoded: Encoded, indices: np.ndarray, width: int) -> Batch:
    valid = encoded.valid_lens[indices]  # (B,)
    tokens = np.full((len(indices), width), PAD_ID, dtype=np.int64)  # (B, W)
    row, offset = ragged(valid)
    tokens[row, offset] = encoded.tokens[encoded.offsets[indices][row] + offset]
    cols = np.arange(width)[None, :]
    segments = (cols >= encoded.first_lens[indices][:, None]) & (cols < valid[:, None])
    batch = {
        "tokens": torch.from_numpy(tokens),
        "segments": torch.from_numpy(segments.astype(np.int64)),
        "valid_lens": torch.from_numpy(valid.astype(np.int64)),
    }
    if encoded.labels is not None:
        batch["labels"] = torch.from_numpy(encoded.labels[indices])
    return batch


class ClassificationStream:
    """The training split's batches, endlessly: batch `step` is a pure function of (seed,
    step), epoch by epoch, each epoch a fresh permutation without its last partial batch.
    Picklable, for DataLoader workers (data/batches.py's `batch_loader` takes it)."""

    def __init__(self, encoded: Encoded, batch_size: int, seed: int):
        if encoded.labels is None:
            raise ValueError("a training split needs labels")
        if len(encoded) < batch_size:
            raise UserError(
                f"the train split has {len(encoded)} examples, fewer than "
                f"trainer.batch_size={batch_size}; lower trainer.batch_size"
            )
        self.encoded = encoded
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = len(encoded) // batch_size
        self._cached: tuple[int, np.ndarray] | None = None  # the last epoch's permutation

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.encoded))
            self._cached = (epoch, order)
        return self._cached[1]

    def indices(self, step: int) -> np.ndarray:
        """The examples of global batch `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """Rank `rank`'s share of global batch `step`: its 1/world contiguous slice, padded
        to the global batch's width, so the shares are the one-process batch cut in rows."""
        indices = self.indices(step)
        width = width_of(self.encoded.valid_lens[indices], self.encoded.max_len)
        share = self.batch_size // world
        return _padded(self.encoded, indices[rank * share : (rank + 1) * share], width)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_cached": None}  # a worker redraws it; no need to send it


def eval_batches(encoded: Encoded, batch_size: int) -> Iterator[Batch]:
    """The whole split in order, the last batch possibly smaller; no "labels" when the split
    has none."""
    for start in range(0, len(encoded), batch_size):
        yield _batch(encoded, np.arange(start, min(start + batch_size, len(encoded))))
