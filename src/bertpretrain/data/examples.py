"""NSP + masked-LM examples, made on the fly from the prepared corpus, and the run's
tokenizer, prepared store and examples (`load_dataset`).

A split's examples are its next-sentence pairs (pairing.py: the token ranges of a and b
and the label); `Examples.batch` cuts the tokens out of the memory-mapped store, pads them
and masks them when a batch is asked for, so no padded example is ever stored. Of each
example, max(1, round(0.15 * len(tokens))) non-special positions are masked: 80% become
`<mask>`, 10% a random word, 10% stay. Masks are a pure function of (seed, epoch, index)
(`masking.hashed_draws`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bertpretrain.data import cache
from bertpretrain.data.corpus import Corpus
from bertpretrain.data.masking import MASK_RATE, hashed_draws, mask_tokens
from bertpretrain.data.pairing import Pairs, ragged, split_pairs
from bertpretrain.data.store import Split, Store, prepare, prepare_learning_words
from bertpretrain.data.tokenizer import Tokenizer, train_tokenizer
from bertpretrain.data.tokenizer import load as load_tokenizer
from bertpretrain.data.tokenizer import save as save_tokenizer
from bertpretrain.data.vocab import CLS_ID, PAD_ID, RESERVED, SEP_ID
from bertpretrain.errors import UserError

if TYPE_CHECKING:
    from bertpretrain.config import TokenizerConfig

log = logging.getLogger(__name__)

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


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: Examples
    valid: Examples | None
    corpus_digest: str  # the training split's, so a resume can tell the corpus changed

    @property
    def vocab(self) -> list[str]:
        return self.tokenizer.vocab


def tokenizer_key(corpus: Corpus, cfg: TokenizerConfig) -> str:
    """Everything that changes a trained vocabulary: the training split and the settings."""
    return cache.key(
        cache.TOKENIZER, corpus.train_digest, cfg.name, cfg.lowercase, cfg.min_freq, cfg.vocab_size
    )


def make_tokenizer(corpus: Corpus, cfg: TokenizerConfig) -> Tokenizer:
    """A vocabulary trained on the training split, read as a stream of sentences."""
    log.info("training a %s vocabulary on %s", cfg.name, corpus.name)
    sentences = (s for p in corpus.read_train() for s in p)
    tokenizer = train_tokenizer(cfg.name, sentences, cfg.min_freq, cfg.vocab_size, cfg.lowercase)
    return _learnt(tokenizer, corpus, cfg)


def _learnt(tokenizer: Tokenizer, corpus: Corpus, cfg: TokenizerConfig) -> Tokenizer:
    if len(tokenizer.vocab) == len(RESERVED):
        raise UserError(
            f"no word of {corpus.name} appears {cfg.min_freq} times; lower data.min_freq "
            "or use a larger corpus"
        )
    return tokenizer


def tokenizer_and_store(
    corpus: Corpus,
    cfg: TokenizerConfig,
    cache_dir: Path | None,
    tokenizer: Tokenizer | None = None,
) -> tuple[Tokenizer, Store]:
    """The run's tokenizer (given, cached or learnt from the training split) and the
    corpus's prepared store (cached or built). A word vocabulary that is not cached yet is
    learnt in the same pass that builds the store."""
    path = cache_dir / f"tokenizer-{tokenizer_key(corpus, cfg)}.json" if cache_dir else None
    if tokenizer is None:
        tokenizer = _cached_tokenizer(path)
    if tokenizer is None and cfg.name == "word":
        log.info("learning a word vocabulary while preparing %s", corpus.name)
        store = prepare_learning_words(corpus, cfg.min_freq, cfg.lowercase, cache_dir)
        _save_tokenizer(_learnt(store.tokenizer, corpus, cfg), path)
        return store.tokenizer, store
    if tokenizer is None:
        tokenizer = make_tokenizer(corpus, cfg)
        _save_tokenizer(tokenizer, path)
    return tokenizer, prepare(corpus, tokenizer, cache_dir)


def _cached_tokenizer(path: Path | None) -> Tokenizer | None:
    if path is None or not path.is_file():
        return None
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable vocabulary cache %s (%s); rebuilding", path, e)
        return None
    log.info("vocabulary from cache %s", path)
    return tokenizer


def _save_tokenizer(tokenizer: Tokenizer, path: Path | None) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tokenizer, path)
    except OSError as e:  # a read-only cache must not stop training
        log.warning("could not write vocabulary cache %s: %s", path, e)


def load_dataset(
    corpus: Corpus,
    tokenizer_cfg: TokenizerConfig,
    max_len: int,
    seed: int,
    cache_dir: Path | None = None,
    whole_word_mask: bool = False,
    tokenizer: Tokenizer | None = None,
    pairing: str = "d2l",
    short_seq_prob: float = 0.1,
) -> Dataset:
    """The tokenizer (given, cached or trained), the prepared store (cached or built) and
    each split's pairs (made in a moment: only they depend on max_len and the seed).

    `tokenizer` is a resumed run's or another rank's: the run keeps its vocabulary.
    """
    tokenizer, store = tokenizer_and_store(corpus, tokenizer_cfg, cache_dir, tokenizer)
    table = continuation_table(tokenizer, whole_word_mask)

    def examples(split: Split, stream: int) -> Examples:
        pairs = split_pairs(split, store.path, pairing, max_len, seed, stream, short_seq_prob)
        mask_seed = int(np.random.default_rng([seed, stream, 1]).integers(2**62))
        return Examples(split, pairs, max_len, len(tokenizer.vocab), mask_seed, table)

    train = examples(store.train, 0)
    if len(train) == 0:
        raise UserError(
            f"no sentence pair of {corpus.name} fits data.max_len={max_len}; raise data.max_len"
        )
    valid = examples(store.valid, 1) if store.valid is not None else None
    if valid is not None and len(valid) == 0:
        raise UserError(
            "the validation split has no sentence pair that fits "
            f"data.max_len={max_len}; raise data.max_len, or skip validation with "
            "data.valid_split=null"
        )
    return Dataset(tokenizer, train, valid, corpus.train_digest)
