"""Next-sentence pairs and masked-LM examples, made on the fly from the prepared corpus.

Semantics follow the reference (d2l.ai): for consecutive sentences (a, b) of a paragraph,
b is kept with probability 0.5, otherwise replaced by a random sentence of a random
paragraph; pairs longer than `max_len` with `<cls> a <sep> b <sep>` are dropped. Of each
example, max(1, round(0.15 * len(tokens))) non-special positions are masked: 80% become
`<mask>`, 10% a random word, 10% stay. NSP labels follow BERT/transformers: 0 = b follows a,
1 = b is random.

`data.pairing=bert` follows google-research/bert's create_pretraining_data.py instead
(`bert_pairs`): segments of whole sentences filled up to max_len - 3 tokens (a shorter
random target with probability `data.short_seq_prob`), split at a random sentence into
A and B, B replaced half the time by sentences of another paragraph (the unused ones are
put back), and the longer segment trimmed at a random end until the pair fits. Our
paragraphs stand for its documents.

A split's examples are stored as small arrays, the token ranges of a and b and the label
(`Pairs`); `Examples.batch` cuts the tokens out of the memory-mapped store, pads them and
masks them when a batch is asked for, so no padded example is ever stored. Masks are a
pure function of (seed, epoch, index) (`masking.hashed_draws`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bertpretrain import files
from bertpretrain.data.corpus import Corpus
from bertpretrain.data.masking import MASK_RATE, hashed_draws, mask_tokens
from bertpretrain.data.store import Split, Store, prepare, prepare_learning_words
from bertpretrain.data.tokenizer import Tokenizer, train_tokenizer
from bertpretrain.data.tokenizer import load as load_tokenizer
from bertpretrain.data.tokenizer import save as save_tokenizer
from bertpretrain.data.vocab import CLS_ID, PAD_ID, RESERVED, SEP_ID
from bertpretrain.errors import UserError

if TYPE_CHECKING:
    from bertpretrain.config import TokenizerConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 4  # bump when the building rules change, so stale caches are not reused
PAIRS_VERSION = 1  # bump when d2l_pairs or bert_pairs change what they make
Batch = dict[str, torch.Tensor]


def max_predictions(max_len: int) -> int:
    return max(1, round(MASK_RATE * max_len))


@dataclass
class Pairs:
    """A split's examples as token ranges of its store."""

    a_start: np.ndarray  # (N,) int64: where segment a starts in the split's tokens
    a_len: np.ndarray  # (N,) int64: its length
    b_start: np.ndarray
    b_len: np.ndarray
    nsp: np.ndarray  # (N,) int8: 0 = b follows a, 1 = b is random


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
        p = self.pairs
        la, lb = p.a_len[indices], p.b_len[indices]
        n, rows = len(indices), np.arange(len(indices))
        tokens = np.full((n, self.max_len), PAD_ID, dtype=np.int64)
        tokens[:, 0] = CLS_ID
        tokens[rows, la + 1] = SEP_ID
        tokens[rows, la + lb + 2] = SEP_ID
        r, off = _ragged(la)
        tokens[r, 1 + off] = self.split.tokens[p.a_start[indices][r] + off]
        r, off = _ragged(lb)
        tokens[r, la[r] + 2 + off] = self.split.tokens[p.b_start[indices][r] + off]
        valid_lens = la + lb + 3
        cols = np.arange(self.max_len)[None, :]
        segments = (cols >= la[:, None] + 2) & (cols < valid_lens[:, None])
        return (
            torch.from_numpy(tokens),
            torch.from_numpy(segments.astype(np.int64)),
            torch.from_numpy(valid_lens.astype(np.int64)),
        )


def _ragged(lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows with `lens` items each: the row of every item and its offset in its row."""
    rows = np.repeat(np.arange(len(lens)), lens)
    firsts = np.cumsum(lens) - lens
    return rows, np.arange(len(rows)) - np.repeat(firsts, lens)


def _nsp_pairs(lens, par_of, max_len: int, rng: np.random.Generator):
    """Sentence indices (a, b) and NSP labels of every kept pair."""
    a = np.flatnonzero(par_of[:-1] == par_of[1:])  # a sentence with a successor in its paragraph
    is_random = rng.random(len(a)) >= 0.5
    par_first = np.flatnonzero(np.r_[True, par_of[1:] != par_of[:-1]])
    par_count = np.diff(np.r_[par_first, len(par_of)])
    other_par = rng.integers(0, len(par_first), len(a))
    other = par_first[other_par] + (rng.random(len(a)) * par_count[other_par]).astype(np.int64)
    b = np.where(is_random, other, a + 1)
    keep = (lens[a] + lens[b] + 3 <= max_len) & (lens[a] + lens[b] > 0)
    return a[keep], b[keep], is_random[keep].astype(np.int8)


def d2l_pairs(split: Split, max_len: int, rng: np.random.Generator) -> Pairs:
    """The reference's pairs of one split: paragraphs shuffled, then each sentence with its
    successor or (half the time) a random sentence, pairs over max_len dropped."""
    order = rng.permutation(len(split))  # the reference shuffles paragraphs first
    par_of, offset = _ragged(split.paragraph_sizes[order])
    sentence = split.paragraphs[:-1][order][par_of] + offset  # store index, shuffled order
    lens = split.sentence_lens[sentence]
    a, b, nsp = _nsp_pairs(lens, par_of, max_len, rng)
    starts = split.sentences[:-1][sentence]
    return Pairs(starts[a], lens[a], starts[b], lens[b], nsp)


def bert_pairs(
    split: Split, max_len: int, rng: np.random.Generator, short_seq_prob: float = 0.1
) -> Pairs:
    """google-research/bert's instances (create_instances_from_document, one pass) over the
    store's documents (Wikipedia articles, blank-line separated texts): a document's
    paragraphs are one stream of sentences, so sequences fill up to max_len. Sequential by
    nature: about a microsecond a sentence."""
    most = max_len - 3
    lens = np.asarray(split.sentence_lens)
    starts = np.asarray(split.sentences)
    par = np.asarray(split.paragraphs)[np.asarray(split.documents)]  # documents' sentences
    n_docs = len(par) - 1
    out: list[tuple[int, int, int, int, int]] = []
    for doc in range(n_docs):
        first, last = int(par[doc]), int(par[doc + 1])
        target = most if rng.random() >= short_seq_prob else int(rng.integers(2, most + 1))
        chunk, length, i = first, 0, first
        while i < last:
            length += int(lens[i])
            if i == last - 1 or length >= target:
                n = i - chunk + 1
                a_end = chunk + (int(rng.integers(1, n)) if n >= 2 else 1)
                a = [int(starts[chunk]), int(starts[a_end])]
                if n == 1 or rng.random() < 0.5:
                    nsp = 1
                    other = doc
                    for _ in range(10):  # as Google's: another document, if one comes up
                        other = int(rng.integers(n_docs))
                        if other != doc:
                            break
                    j = int(par[other]) + int(rng.integers(par[other + 1] - par[other]))
                    wanted = target - (a[1] - a[0])
                    b = [int(starts[j]), int(starts[j])]
                    while j < par[other + 1]:
                        b[1] = int(starts[j + 1])
                        if b[1] - b[0] >= wanted:
                            break
                        j += 1
                    i -= i + 1 - a_end  # the chunk's unused sentences start the next one
                else:
                    nsp = 0
                    b = [a[1], int(starts[i + 1])]
                _truncate_pair(a, b, most, rng)
                if a[1] > a[0] and b[1] > b[0]:
                    out.append((a[0], a[1] - a[0], b[0], b[1] - b[0], nsp))
                chunk, length = i + 1, 0
            i += 1
    rows = np.array(out, dtype=np.int64).reshape(-1, 5)
    return Pairs(*(rows[:, k] for k in range(4)), rows[:, 4].astype(np.int8))


def _truncate_pair(a: list[int], b: list[int], most: int, rng: np.random.Generator) -> None:
    """Google's truncate_seq_pair on [start, end) ranges: trim the longer segment, at a
    random end, one token at a time, until both fit in `most`."""
    while (a[1] - a[0]) + (b[1] - b[0]) > most:
        longer = a if a[1] - a[0] > b[1] - b[0] else b
        if rng.random() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1


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


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, (f"v{CACHE_VERSION}", *parts))).encode()).hexdigest()[
        :24
    ]


def tokenizer_key(corpus: Corpus, cfg: TokenizerConfig) -> str:
    """Everything that changes a trained vocabulary: the training split and the settings."""
    return _key(corpus.train_digest, cfg.name, cfg.lowercase, cfg.min_freq, cfg.vocab_size)


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


def cached_pairs(folder: Path, settings: tuple, make: Callable[[], Pairs]) -> Pairs:
    """A split's pairs, saved beside its store the first time and memory-mapped after:
    making them walks every sentence (a second for 100M tokens, and BERT's rule is a
    Python loop), where a sweep over seeds or lengths, or a restart, needs them again."""
    key = hashlib.sha256(repr((PAIRS_VERSION, *settings)).encode()).hexdigest()[:16]
    path = folder / f"pairs-{key}.npy"
    try:
        rows = np.load(path, mmap_mode="r")
        if rows.ndim == 2 and rows.shape[1] == 5 and rows.dtype == np.int64:
            return Pairs(*(rows[:, k] for k in range(4)), np.asarray(rows[:, 4], np.int8))
    except (OSError, ValueError):
        pass  # none yet, or damaged: made again
    pairs = make()
    rows = np.stack([pairs.a_start, pairs.a_len, pairs.b_start, pairs.b_len, pairs.nsp], 1)
    with contextlib.suppress(OSError):  # a read-only cache only costs the making
        files.atomic_write(path, lambda f: np.save(f, rows.astype(np.int64)))
    return pairs


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

    def make_pairs(split: Split, stream: int) -> Pairs:
        rng = np.random.default_rng([seed, stream])
        if pairing == "bert":
            return bert_pairs(split, max_len, rng, short_seq_prob)
        return d2l_pairs(split, max_len, rng)

    def examples(split: Split, stream: int) -> Examples:
        settings = (pairing, max_len, seed, stream, short_seq_prob if pairing == "bert" else 0)
        pairs = cached_pairs(store.path, settings, lambda: make_pairs(split, stream))
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
