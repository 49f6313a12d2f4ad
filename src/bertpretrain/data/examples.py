"""Next-sentence pairs and masked-LM targets, built with vectorised numpy and cached on disk.

Semantics follow the reference (d2l.ai): for consecutive sentences (a, b) of a paragraph,
b is kept with probability 0.5, otherwise replaced by a random sentence of a random
paragraph; pairs longer than `max_len` with `<cls> a <sep> b <sep>` are dropped. Of each
example, max(1, round(0.15 * len(tokens))) non-special positions are masked: 80% become
`<mask>`, 10% a random word, 10% stay. NSP labels follow BERT/transformers: 0 = b follows a,
1 = b is random.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from bertpretrain.data.corpus import Paragraph, read_split
from bertpretrain.data.masking import MASK_RATE, mask_tokens
from bertpretrain.data.vocab import (
    CLS_ID,
    PAD_ID,
    RESERVED,
    SEP_ID,
    build_vocab,
    token_index,
)
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the building rules change, so stale caches are not reused


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


def _flatten(paragraphs: list[Paragraph], index: dict[str, int]):
    """Concatenated token ids plus each sentence's start, length and paragraph.

    Per-token work stays in C (chain, map over a dict method): a Python-level loop over
    the 2.1M tokens of WikiText-2 would cost a second by itself.
    """
    sentences = [s for p in paragraphs for s in p]
    lens = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    tokens = list(itertools.chain.from_iterable(sentences))
    # Words outside the vocabulary -> int() == 0 == <unk> (RESERVED[0]), with no Python call.
    lookup = collections.defaultdict(int, index)
    ids = np.fromiter(map(lookup.__getitem__, tokens), dtype=np.int32, count=len(tokens))
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    par_of = np.repeat(np.arange(len(paragraphs)), [len(p) for p in paragraphs])
    return ids, starts, lens, par_of


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
    paragraphs: list[Paragraph], index: dict[str, int], max_len: int, rng: np.random.Generator
) -> Examples:
    """NSP pairs and MLM targets of one corpus split, all vectorised over examples."""
    order = rng.permutation(len(paragraphs))  # the reference shuffles paragraphs first
    ids, starts, lens, par_of = _flatten([paragraphs[i] for i in order], index)
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
        len(index),
        max_predictions(max_len),
        generator,
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


@dataclass
class Dataset:
    vocab: list[str]
    train: Examples
    valid: Examples | None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise UserError(
            f"cannot read corpus file {path}: {e.strerror}; check its permissions"
        ) from None
    return h.hexdigest()


def cache_key(
    train_path: Path, valid_path: Path | None, max_len: int, min_freq: int, seed: int
) -> str:
    """Everything that changes the built examples: the corpus bytes and the building knobs."""
    parts = [
        f"v{CACHE_VERSION}",
        _file_digest(train_path),
        _file_digest(valid_path) if valid_path else "-",
        str(max_len),
        str(min_freq),
        str(seed),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _save(path: Path, data: Dataset) -> None:
    arrays = {"vocab": np.array(data.vocab)}
    for name, ex in (("train", data.train), ("valid", data.valid)):
        if ex is not None:
            for f in fields(Examples):
                arrays[f"{name}.{f.name}"] = getattr(ex, f.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as z:
        split = {
            name: Examples(**{f.name: z[f"{name}.{f.name}"] for f in fields(Examples)})
            if f"{name}.tokens" in z
            else None
            for name in ("train", "valid")
        }
        return Dataset([str(t) for t in z["vocab"]], split["train"], split["valid"])


def build_dataset(
    train_path: Path, valid_path: Path | None, max_len: int, min_freq: int, seed: int
) -> Dataset:
    train_pars = read_split(train_path)
    vocab = build_vocab(itertools.chain.from_iterable(s for p in train_pars for s in p), min_freq)
    if len(vocab) == len(RESERVED):
        raise UserError(
            f"no word of {train_path} appears {min_freq} times; lower data.min_freq or use a larger corpus"
        )
    index = token_index(vocab)
    train = build_examples(train_pars, index, max_len, np.random.default_rng([seed, 0]))
    valid = None
    if valid_path is not None:
        valid = build_examples(
            read_split(valid_path), index, max_len, np.random.default_rng([seed, 1])
        )
    if len(train) == 0:
        raise UserError(
            f"no sentence pair of {train_path} fits data.max_len={max_len}; raise data.max_len"
        )
    return Dataset(vocab, train, valid)


def load_dataset(
    train_path: Path,
    valid_path: Path | None,
    max_len: int,
    min_freq: int,
    seed: int,
    cache_dir: Path | None,
) -> Dataset:
    """Built examples from the cache when they are there, else built (and cached)."""
    if cache_dir is None:
        return build_dataset(train_path, valid_path, max_len, min_freq, seed)
    path = cache_dir / f"examples-{cache_key(train_path, valid_path, max_len, min_freq, seed)}.npz"
    if path.is_file():
        try:
            data = _load(path)
            log.info("examples from cache %s", path)
            return data
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable example cache %s (%s); rebuilding", path, e)
    data = build_dataset(train_path, valid_path, max_len, min_freq, seed)
    try:
        _save(path, data)
    except OSError as e:  # a read-only cache must not stop training
        log.warning("could not write example cache %s: %s", path, e)
    return data
