"""Next-sentence pairs: which two token ranges of the prepared corpus make each example.

`data.pairing=d2l` follows the reference (d2l.ai, `d2l_pairs`): for consecutive sentences
(a, b) of a paragraph, b is kept with probability 0.5, otherwise replaced by a random
sentence of a random paragraph; pairs longer than `max_len` with `<cls> a <sep> b <sep>`
are dropped. NSP labels follow BERT/transformers: 0 = b follows a, 1 = b is random.

`data.pairing=bert` follows google-research/bert's create_pretraining_data.py instead
(`bert_pairs`): segments of whole sentences filled up to max_len - 3 tokens (a shorter
random target with probability `data.short_seq_prob`), split at a random sentence into
A and B, B replaced half the time by sentences of another document (the unused ones are
put back), and the longer segment trimmed at a random end until the pair fits.

A split's pairs are small arrays, the token ranges of a and b and the label (`Pairs`),
saved beside the store (`cached_pairs`): examples.py cuts the tokens out when a batch is
asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bertpretrain import files
from bertpretrain.data import cache
from bertpretrain.data.store import Split


@dataclass
class Pairs:
    """A split's examples as token ranges of its store."""

    a_start: np.ndarray  # (N,) int64: where segment a starts in the split's tokens
    a_len: np.ndarray  # (N,) int64: its length
    b_start: np.ndarray
    b_len: np.ndarray
    nsp: np.ndarray  # (N,) int8: 0 = b follows a, 1 = b is random


def ragged(lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    par_of, offset = ragged(split.paragraph_sizes[order])
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
    docs = _Documents(
        np.asarray(split.sentences), np.asarray(split.paragraphs)[np.asarray(split.documents)]
    )
    most = max_len - 3
    rows: list[tuple[int, int, int, int, int]] = []
    for doc in range(len(docs.firsts) - 1):
        target = most if rng.random() >= short_seq_prob else int(rng.integers(2, most + 1))
        rows += _document_pairs(docs, doc, target, most, rng)
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return Pairs(*(table[:, k] for k in range(4)), table[:, 4].astype(np.int8))


class _Documents(NamedTuple):
    """A split's sentences by document, as BERT's rule walks them."""

    starts: np.ndarray  # (S + 1,) token offsets: sentence i is tokens starts[i]:starts[i+1]
    firsts: np.ndarray  # (D + 1,) sentence offsets: document k is sentences firsts[k]:firsts[k+1]


def _document_pairs(
    docs: _Documents, doc: int, target: int, most: int, rng: np.random.Generator
) -> list[tuple[int, int, int, int, int]]:
    """One document's pairs (a_start, a_len, b_start, b_len, nsp): chunks of whole
    sentences filled up to `target` tokens, each split into a and b and trimmed to `most`."""
    rows = []
    chunk, last = int(docs.firsts[doc]), int(docs.firsts[doc + 1])
    while chunk < last:
        end = _filled(docs.starts, chunk, last, target)
        a, b, nsp, chunk = _split_chunk(docs, doc, chunk, end, target, rng)
        _truncate_pair(a, b, most, rng)
        if a[1] > a[0] and b[1] > b[0]:  # trimming can empty a segment
            rows.append((a[0], a[1] - a[0], b[0], b[1] - b[0], nsp))
    return rows


def _filled(starts: np.ndarray, first: int, last: int, wanted: int) -> int:
    """The sentence at which sentences first, first + 1, ... hold `wanted` tokens, or the
    last one before `last` (their document's end) if they never do."""
    end = first
    while end < last - 1 and starts[end + 1] - starts[first] < wanted:
        end += 1
    return end


def _split_chunk(
    docs: _Documents, doc: int, chunk: int, end: int, target: int, rng: np.random.Generator
) -> tuple[list[int], list[int], int, int]:
    """Sentences chunk..end split at a random sentence into a and b ([start, end) token
    ranges). b is the rest (nsp 0), or half the time, and always for a single sentence,
    sentences of another document (nsp 1): then the unused rest starts the next chunk.
    Returns a, b, the label and the next chunk's first sentence."""
    n = end - chunk + 1
    a_end = chunk + (int(rng.integers(1, n)) if n >= 2 else 1)
    a = [int(docs.starts[chunk]), int(docs.starts[a_end])]
    if n >= 2 and rng.random() >= 0.5:
        return a, [a[1], int(docs.starts[end + 1])], 0, end + 1
    return a, _random_b(docs, doc, target - (a[1] - a[0]), rng), 1, a_end


def _random_b(docs: _Documents, doc: int, wanted: int, rng: np.random.Generator) -> list[int]:
    """Sentences of another document (as Google's: the first of 10 draws that is not
    `doc`), from a random one on, until they hold `wanted` tokens or the document ends."""
    other = doc
    for _ in range(10):
        other = int(rng.integers(len(docs.firsts) - 1))
        if other != doc:
            break
    first, last = int(docs.firsts[other]), int(docs.firsts[other + 1])
    start = first + int(rng.integers(last - first))
    end = _filled(docs.starts, start, last, wanted)
    return [int(docs.starts[start]), int(docs.starts[end + 1])]


def _truncate_pair(a: list[int], b: list[int], most: int, rng: np.random.Generator) -> None:
    """Google's truncate_seq_pair on [start, end) ranges: trim the longer segment, at a
    random end, one token at a time, until both fit in `most`."""
    while (a[1] - a[0]) + (b[1] - b[0]) > most:
        longer = a if a[1] - a[0] > b[1] - b[0] else b
        if rng.random() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1


def cached_pairs(folder: Path, settings: tuple, make: Callable[[], Pairs]) -> Pairs:
    """A split's pairs, saved beside its store the first time and memory-mapped after:
    making them walks every sentence (a second for 100M tokens, and BERT's rule is a
    Python loop), where a sweep over seeds or lengths, or a restart, needs them again."""
    path = folder / f"pairs-{cache.key(cache.PAIRS, *settings)}.npy"
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


def split_pairs(
    split: Split,
    folder: Path,
    pairing: str,
    max_len: int,
    seed: int,
    stream: int,
    short_seq_prob: float,
) -> Pairs:
    """A split's pairs by the `pairing` rule ("d2l" or "bert"), drawn from the random
    stream (seed, stream), saved in `folder` (the store's) the first time (`cached_pairs`)."""

    def make() -> Pairs:
        rng = np.random.default_rng([seed, stream])
        if pairing == "bert":
            return bert_pairs(split, max_len, rng, short_seq_prob)
        return d2l_pairs(split, max_len, rng)

    settings = (pairing, max_len, seed, stream, short_seq_prob if pairing == "bert" else 0)
    return cached_pairs(folder, settings, make)
