"""NSP + masked-LM examples, made on the fly from the prepared corpus.

A split's examples are its next-sentence pairs (pairing.py: the token ranges of a and b
and the label); `Examples.batch` cuts the tokens out of the memory-mapped store, pads them
and masks them when a batch is asked for, so no padded example is ever stored. Of each
example, max(1, round(0.15 * len(tokens))) non-special positions are masked: 80% become
`<mask>`, 10% a random word, 10% stay. Masks are a pure function of (seed, epoch, index)
(`masking.hashed_draws`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bertpretrain.data.masking import MASK_RATE, hashed_draws, mask_tokens
from bertpretrain.data.pairing import Pairs, ragged
from bertpretrain.data.store import Split
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import CLS_ID, PAD_ID, SEP_ID

Batch = dict[str, torch.Tensor]


def max_predictions(max_len: int) -> int:
    return max(1, round(MASK_RATE * max_len))


@dataclass
class Examples:
    """One split's NSP + MLM examples, made a batch at a time from the store."""

    split: Split
    pairs: Pairs
    max_len: int
    vocab_size: int
    seed: int  # of the masks: a pure function of (seed, epoch, index)
    continuation: torch.Tensor | None = None  # whole-word masking's table

    def __len__(self) -> int:
        return len(self.pairs.nsp)

    @property
    def valid_lens(self) -> np.ndarray:
        """(N,) real tokens of every example, <cls> and <sep>s included."""
        return self.pairs.a_len + self.pairs.b_len + 3

    def predictions(self) -> np.ndarray:
        """(N,) masked positions of every example: 15% of its tokens, at least 1, at most
        its word positions and max_predictions."""
        valid = self.valid_lens
        wanted = np.maximum(1, np.round(MASK_RATE * valid))
        return np.minimum(np.minimum(wanted, valid - 3), max_predictions(self.max_len))

    def batch(self, indices: np.ndarray, epochs: np.ndarray | int = 0) -> Batch:
        """Examples `indices`, padded to max_len and masked with the draws of `epochs`
        (0 for every epoch under static masking), as the model's tensors."""
        indices = np.asarray(indices, dtype=np.int64)
        epochs = np.broadcast_to(np.asarray(epochs, dtype=np.int64), indices.shape)
        tokens, segments, valid_lens = self._padded(indices)
        max_preds = max_predictions(self.max_len)
        draws = hashed_draws(self.seed, epochs, indices, self.max_len, max_preds, self.vocab_size)
        tokens, positions, labels, weights = mask_tokens(
            tokens, segments, valid_lens, self.vocab_size, max_preds, draws, self.continuation
        )
        return {
            "tokens": tokens,
            "segments": segments,
            "valid_lens": valid_lens,
            "pred_positions": positions,
            "pred_labels": labels,
            "pred_weights": weights,
            "nsp_labels": torch.from_numpy(self.pairs.nsp[indices].astype(np.int64)),
        }

    def _padded(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`<cls> a <sep> b <sep> <pad>...` and its segment ids, vectorised over the batch."""
        pairs = self.pairs
        la, lb = pairs.a_len[indices], pairs.b_len[indices]  # (B,) segment lengths
        n, rows = len(indices), np.arange(len(indices))
        tokens = np.full((n, self.max_len), PAD_ID, dtype=np.int64)
        tokens[:, 0] = CLS_ID
        tokens[rows, la + 1] = SEP_ID
        tokens[rows, la + lb + 2] = SEP_ID
        row, offset = ragged(la)  # every token of every a: its example and its place in a
        tokens[row, 1 + offset] = self.split.tokens[pairs.a_start[indices][row] + offset]
        row, offset = ragged(lb)
        tokens[row, la[row] + 2 + offset] = self.split.tokens[pairs.b_start[indices][row] + offset]
        valid_lens = la + lb + 3
        cols = np.arange(self.max_len)[None, :]
        segments = (cols >= la[:, None] + 2) & (cols < valid_lens[:, None])
        return (
            torch.from_numpy(tokens),
            torch.from_numpy(segments.astype(np.int64)),
            torch.from_numpy(valid_lens.astype(np.int64)),
        )


def continuation_table(tokenizer: Tokenizer, whole_word_mask: bool) -> torch.Tensor | None:
    """What masking needs for whole-word masking: (V,) bool, True for word-continuing ids."""
    table = tokenizer.continuation() if whole_word_mask else None
    return None if table is None else torch.from_numpy(table)
