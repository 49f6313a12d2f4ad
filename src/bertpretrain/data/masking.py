"""Masked-LM corruption, vectorised in torch over a whole set of examples or one batch.

The batch producer (data/batches.py) masks every batch as it makes it, from random draws
that are a pure function of (seed, epoch, example index) (`hashed_draws`): `static`
masks (the reference's, BERT's) use epoch 0 for every epoch, so an example is masked the
same way each time; `dynamic` masks (RoBERTa's) use the real epoch. Either way a resumed
run, a worker process or another rank makes exactly the same batch.

Whole-word masking (BERT's later WWM release): with a `continuation` table marking the
vocabulary's "##" pieces, a word split into pieces is masked all at once or not at all.
Masking one piece of "phil ##har ##monic" leaves the rest to give it away; masking the
whole word makes the model predict the word from its context. The 80/10/10 corruption is
still drawn per piece, as in Google's release. Without a table every word position is its
own word and the draws are exactly those of plain token masking.
"""

from __future__ import annotations

import numpy as np
import torch

from bertpretrain.data.vocab import MASK_ID, RESERVED

MASK_RATE = 0.15
# (B, L) keys that order the positions, (B, P) draws that pick <mask>/random/kept, and
# (B, P) random words: everything random that masking uses
Draws = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def random_draws(
    shape: tuple[int, int], max_preds: int, vocab_size: int, generator: torch.Generator
) -> Draws:
    """Draws from a torch generator (in the order masking has always drawn them)."""
    n = shape[0]
    keys = torch.rand(shape, generator=generator)
    u = torch.rand((n, max_preds), generator=generator)
    words = torch.randint(len(RESERVED), vocab_size, (n, max_preds), generator=generator)
    return keys, u, words


# splitmix64's constants: a counter through this mix is a good stream of random bits
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    return x ^ (x >> np.uint64(31))


def _uniform(key: int, rows: np.ndarray, width: int) -> np.ndarray:
    """(len(rows), width) floats in [0, 1), each a hash of (key, row, column)."""
    with np.errstate(over="ignore"):
        base = _mix(np.uint64(key) ^ (rows.astype(np.uint64) * np.uint64(_GOLDEN)))
        x = _mix(base[:, None] + np.arange(1, width + 1, dtype=np.uint64) * np.uint64(_GOLDEN))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def hashed_draws(
    seed: int, epochs: np.ndarray, indices: np.ndarray, length: int, max_preds: int, vocab_size: int
) -> Draws:
    """Draws for the examples `indices` in `epochs`, each row a pure function of (seed,
    epoch, index), whatever batch, worker or rank it is made in (counter-based, like
    Megatron's per-sample seeds, but vectorised over the batch)."""
    rows = (epochs.astype(np.uint64) << np.uint64(40)) ^ indices.astype(np.uint64)
    streams = [
        _uniform(seed * 3 + k, rows, width)
        for k, width in enumerate((length, max_preds, max_preds))
    ]
    words = len(RESERVED) + np.floor(streams[2] * (vocab_size - len(RESERVED)))
    return (
        torch.from_numpy(streams[0]).float(),
        torch.from_numpy(streams[1]).float(),
        torch.from_numpy(words.astype(np.int64)),
    )


def candidates(segments: torch.Tensor, valid_lens: torch.Tensor) -> torch.Tensor:
    """(B, L) True at word positions: not <cls>, not a <sep>, not padding.

    Found by position, not by id, because a corpus may contain the literal text "<sep>".
    """
    cols = torch.arange(segments.shape[1])
    valid = valid_lens[:, None]
    first_sep = ((segments == 0) & (cols < valid)).sum(1, keepdim=True) - 1
    return (cols >= 1) & (cols < valid - 1) & (cols != first_sep)


def word_starts(
    tokens: torch.Tensor, candidate: torch.Tensor, continuation: torch.Tensor | None
) -> torch.Tensor:
    """(B, L) True where a word begins: a candidate that is not a "##" piece, or whose left
    neighbour is not a candidate (a piece right after <cls> or <sep> starts its own word)."""
    if continuation is None:
        return candidate
    after_candidate = torch.zeros_like(candidate)
    after_candidate[:, 1:] = candidate[:, :-1]
    return candidate & ~(continuation[tokens.long()] & after_candidate)


def mask_tokens(
    tokens: torch.Tensor,
    segments: torch.Tensor,
    valid_lens: torch.Tensor,
    vocab_size: int,
    max_preds: int,
    draws: torch.Generator | Draws,
    continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrupt whole words, about 15% of each row's tokens: 80% <mask>, 10% a random word,
    10% unchanged, per piece. Returns new tokens and (B, max_preds) positions (ascending),
    labels (the original pieces) and weights; unused slots hold position 0, label 0, weight 0.

    `draws` are the random numbers to use (`hashed_draws`), or a torch generator to take
    them from. `continuation` is an optional (V,) bool table, True for ids that continue
    the previous token's word; without it every word position is a word of one piece.

    Budget: n_pred = min(max(1, round(0.15 * len)), word positions, max_preds) pieces. Words
    are taken in a random order while they fit in it; taking stops at the first word that
    does not fit. The first word is always taken (cut to max_preds pieces if longer), so every
    row with a word position has a prediction.
    """
    n, length = tokens.shape
    cols = torch.arange(length)
    candidate = candidates(segments, valid_lens)
    n_pred = torch.minimum(torch.round(MASK_RATE * valid_lens).clamp(min=1), candidate.sum(1))
    budget = n_pred.clamp(max=max_preds)[:, None]
    if isinstance(draws, torch.Generator):
        draws = random_draws(tuple(tokens.shape), max_preds, vocab_size, draws)
    keys, u, random_words = draws
    start = word_starts(tokens, candidate, continuation)
    if continuation is not None:  # every piece takes its word's key
        start_pos = torch.where(start, cols.int(), 0).cummax(dim=1).values  # (B, L)
        keys = keys.gather(1, start_pos.long())
    # The stable sort keeps a word's pieces together, in order, even where two keys tie.
    order = keys.masked_fill(~candidate, 2.0).argsort(dim=1, stable=True)[:, : max_preds + 1]
    # Slot j ends a word where slot j + 1 starts another or holds no word position.
    boundary = start | ~candidate
    ends = torch.cat([boundary.gather(1, order[:, 1:]), torch.ones((n, 1), dtype=torch.bool)], 1)
    ends = ends[:, :max_preds]  # (B, P)
    slot = torch.arange(1, max_preds + 1)  # pieces taken up to and including each slot
    fits = torch.where(ends & (slot <= budget), slot, 0).amax(1)  # the words that fit
    first = torch.where(ends, slot, max_preds).amin(1)  # the first word, cut to max_preds
    taken = torch.where(n_pred > 0, torch.maximum(fits, first), 0)
    real = torch.arange(max_preds) < taken[:, None]
    order = order[:, :max_preds]
    positions = torch.where(real, order, length).sort(dim=1).values  # real ones first
    positions = torch.where(real, positions, 0)
    labels = torch.where(real, tokens.gather(1, positions), 0)
    corrupted = torch.where(u < 0.8, MASK_ID, torch.where(u < 0.9, random_words, labels))
    rows = torch.arange(n)[:, None].expand_as(real)
    out = tokens.clone()
    out[rows[real], positions[real]] = corrupted[real].to(out.dtype)
    return out, positions, labels, real.float()
