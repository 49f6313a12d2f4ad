"""Next-sentence pairs and masked-LM targets, built with vectorised numpy from the prepared
corpus (data/store.py) and cached on disk.

Semantics follow the reference (d2l.ai): for consecutive sentences (a, b) of a paragraph,
b is kept with probability 0.5, otherwise replaced by a random sentence of a random
paragraph; pairs longer than `max_len` with `<cls> a <sep> b <sep>` are dropped. Of each
example, max(1, round(0.15 * len(tokens))) non-special positions are masked: 80% become
`<mask>`, 10% a random word, 10% stay. NSP labels follow BERT/transformers: 0 = b follows a,
1 = b is random.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bertpretrain import files
from bertpretrain.data.corpus import Corpus
from bertpretrain.data.masking import MASK_RATE, mask_tokens
from bertpretrain.data.store import Split, prepare
from bertpretrain.data.tokenizer import Tokenizer, train_tokenizer
from bertpretrain.data.tokenizer import load as load_tokenizer
from bertpretrain.data.tokenizer import save as save_tokenizer
from bertpretrain.data.vocab import CLS_ID, PAD_ID, RESERVED, SEP_ID
from bertpretrain.errors import UserError

if TYPE_CHECKING:
    from bertpretrain.config import TokenizerConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when the building rules change, so stale caches are not reused


@dataclass
class Examples:
    tokens: np.ndarray  # (N, L) int32, <pad>-filled
    segments: np.ndarray  # (N, L) int8: 0 for <cls> a <sep>, 1 for b <sep>
    valid_lens: np.ndarray  # (N,) int32: real tokens per row
    pred_positions: np.ndarray  # (N, P) int32: masked positions, 0 where padded
    pred_labels: np.ndarray  # (N, P) int32: original token ids, 0 where padded
    pred_weights: np.ndarray  # (N, P) float32: 1 for a real prediction, 0 for padding
    nsp_labels: np.ndarray  # (N,) int8: 0 = is next, 1 = random

    def __len__(self) -> int:
        return len(self.nsp_labels)


def max_predictions(max_len: int) -> int:
    return max(1, round(MASK_RATE * max_len))


def _shuffled(split: Split, order: np.ndarray):
    """Each sentence's start and length in the tokens, and its paragraph's rank, with the
    paragraphs taken in `order`."""
    par_of, offset = _ragged(split.paragraph_sizes[order])
    sentence = split.paragraphs[:-1][order][par_of] + offset
    return split.sentences[:-1][sentence], split.sentence_lens[sentence], par_of


def _ragged(lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows with `lens` items each: the row of every item and its offset in its row."""
    rows = np.repeat(np.arange(len(lens)), lens)
    firsts = np.cumsum(lens) - lens
    return rows, np.arange(len(rows)) - np.repeat(firsts, lens)


def _nsp_pairs(starts, lens, par_of, max_len: int, rng: np.random.Generator):
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


def build_examples(
    split: Split,
    tokenizer: Tokenizer,
    max_len: int,
    rng: np.random.Generator,
    whole_word_mask: bool = False,
) -> Examples:
    """NSP pairs and MLM targets of one prepared corpus split, vectorised over examples."""
    order = rng.permutation(len(split))  # the reference shuffles paragraphs first
    starts, lens, par_of = _shuffled(split, order)
    ids = split.tokens
    a, b, nsp = _nsp_pairs(starts, lens, par_of, max_len, rng)
    la, lb = lens[a], lens[b]
    n = len(a)
    tokens = np.full((n, max_len), PAD_ID, dtype=np.int32)
    segments = np.zeros((n, max_len), dtype=np.int8)
    rows = np.arange(n)
    tokens[:, 0] = CLS_ID
    tokens[rows, la + 1] = SEP_ID
    tokens[rows, la + lb + 2] = SEP_ID
    r, off = _ragged(la)
    tokens[r, 1 + off] = ids[starts[a][r] + off]
    r, off = _ragged(lb)
    tokens[r, la[r] + 2 + off] = ids[starts[b][r] + off]
    valid_lens = (la + lb + 3).astype(np.int32)
    cols = np.arange(max_len)[None, :]
    segments[(cols >= la[:, None] + 2) & (cols < valid_lens[:, None])] = 1
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    masked = mask_tokens(
        *(torch.from_numpy(a).long() for a in (tokens, segments, valid_lens)),
        len(tokenizer.vocab),
        max_predictions(max_len),
        generator,
        continuation_table(tokenizer, whole_word_mask),
    )
    tokens, positions, labels, weights = (t.numpy() for t in masked)
    return Examples(
        tokens.astype(np.int32),
        segments,
        valid_lens,
        positions.astype(np.int32),
        labels.astype(np.int32),
        weights.astype(np.float32),
        nsp,
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


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, (f"v{CACHE_VERSION}", *parts))).encode()).hexdigest()[
        :24
    ]


def tokenizer_key(corpus: Corpus, cfg: TokenizerConfig) -> str:
    """Everything that changes a trained vocabulary: the training split and the settings."""
    return _key(corpus.train_digest, cfg.name, cfg.lowercase, cfg.min_freq, cfg.vocab_size)


def examples_key(
    corpus: Corpus, tokenizer: Tokenizer, max_len: int, whole_word_mask: bool, seed: int
) -> str:
    """Everything that changes the built examples: both splits, the exact vocabulary (a
    resumed run brings its own) and the building knobs."""
    vocab = hashlib.sha256("\n".join(tokenizer.vocab).encode()).hexdigest()
    settings = sorted(tokenizer.settings().items())
    wwm = whole_word_mask and tokenizer.kind == "wordpiece"  # words have no pieces to join
    return _key(corpus.train_digest, corpus.valid_digest, vocab, settings, max_len, wwm, seed)


def _save(data: Dataset, path: Path) -> None:
    arrays = {
        "vocab": np.array(data.vocab),
        "tokenizer": np.array(json.dumps(data.tokenizer.settings())),
    }
    for name, ex in (("train", data.train), ("valid", data.valid)):
        if ex is not None:
            for f in fields(Examples):
                arrays[f"{name}.{f.name}"] = getattr(ex, f.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def _load(path: Path, tokenizer: Tokenizer, digest: str) -> Dataset:
    with np.load(path, allow_pickle=False) as z:
        if [str(t) for t in z["vocab"]] != tokenizer.vocab:
            raise ValueError("its vocabulary is not this run's")
        split = {
            name: Examples(**{f.name: z[f"{name}.{f.name}"] for f in fields(Examples)})
            if f"{name}.tokens" in z
            else None
            for name in ("train", "valid")
        }
        return Dataset(tokenizer, split["train"], split["valid"], digest)


def _cached(path: Path | None, what: str, load: Callable, build: Callable, save: Callable):
    """`load(path)` when the cache holds a readable copy, else `build()`, then `save` it."""
    if path is not None and path.is_file():
        try:
            value = load(path)
            log.info("%s from cache %s", what, path)
            return value
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable %s cache %s (%s); rebuilding", what, path, e)
    value = build()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(value, path)
        except OSError as e:  # a read-only cache must not stop training
            log.warning("could not write %s cache %s: %s", what, path, e)
    return value


def make_tokenizer(corpus: Corpus, cfg: TokenizerConfig) -> Tokenizer:
    """A vocabulary trained on the training split, read as a stream of sentences."""
    log.info("training a %s vocabulary on %s", cfg.name, corpus.name)
    sentences = (s for p in corpus.read_train() for s in p)
    tokenizer = train_tokenizer(cfg.name, sentences, cfg.min_freq, cfg.vocab_size, cfg.lowercase)
    if len(tokenizer.vocab) == len(RESERVED):
        raise UserError(
            f"no word of {corpus.name} appears {cfg.min_freq} times; lower data.min_freq "
            "or use a larger corpus"
        )
    return tokenizer


def get_tokenizer(corpus: Corpus, cfg: TokenizerConfig, cache_dir: Path | None) -> Tokenizer:
    """The vocabulary for `corpus`: from the cache, or trained on its training split."""
    path = cache_dir / f"tokenizer-{tokenizer_key(corpus, cfg)}.json" if cache_dir else None
    return _cached(
        path, "vocabulary", load_tokenizer, lambda: make_tokenizer(corpus, cfg), save_tokenizer
    )


def load_dataset(
    corpus: Corpus,
    tokenizer_cfg: TokenizerConfig,
    max_len: int,
    seed: int,
    cache_dir: Path | None = None,
    whole_word_mask: bool = False,
    tokenizer: Tokenizer | None = None,
) -> Dataset:
    """The tokenizer (given, cached or trained) and the examples (cached or built).

    `tokenizer` is a resumed run's or another rank's: the run keeps its vocabulary.
    """
    if tokenizer is None:
        tokenizer = get_tokenizer(corpus, tokenizer_cfg, cache_dir)

    def build() -> Dataset:
        store = prepare(corpus, tokenizer, cache_dir)
        train = build_examples(
            store.train, tokenizer, max_len, np.random.default_rng([seed, 0]), whole_word_mask
        )
        if len(train) == 0:
            raise UserError(
                f"no sentence pair of {corpus.name} fits data.max_len={max_len}; raise data.max_len"
            )
        valid = None
        if store.valid is not None:
            valid = build_examples(
                store.valid,
                tokenizer,
                max_len,
                np.random.default_rng([seed, 1]),
                whole_word_mask,
            )
        return Dataset(tokenizer, train, valid, corpus.train_digest)

    if cache_dir is not None:
        files.remove_orphans(cache_dir)  # temp files of cache writes that a kill interrupted

    key = examples_key(corpus, tokenizer, max_len, whole_word_mask, seed)
    path = cache_dir / f"examples-{key}.npz" if cache_dir else None
    dataset = _cached(
        path, "examples", lambda p: _load(p, tokenizer, corpus.train_digest), build, _save
    )
    if dataset.valid is not None and len(dataset.valid) == 0:
        raise UserError(
            "the validation split has no sentence pair that fits "
            f"data.max_len={max_len}; raise data.max_len, or skip validation with "
            "data.valid_split=null"
        )
    return dataset
