"""Writing a split of the store: its paragraphs streamed through the tokenizer, on every
core, into the flat arrays that store.py describes and opens.

A chunk of paragraphs at a time goes through the tokenizer and onto disk, so memory does
not grow with the corpus. `write_learning_words` also learns the word vocabulary in the
same pass, for a corpus whose vocabulary is not cached yet.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bertpretrain import files
from bertpretrain.data import parallel
from bertpretrain.data.corpus import Paragraph
from bertpretrain.data.tokenizer import Tokenizer, number_words, split_words
from bertpretrain.data.vocab import build_vocab

CHUNK = 2_000  # paragraphs per tokenizer call: enough to amortise the call, few MB of text
ARRAYS = ("tokens", "sentences", "paragraphs", "documents")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _encode_chunks(
    paragraphs: Iterable[Paragraph], tokenizer: Tokenizer
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, sentence lengths, paragraph sizes) of successive chunks of paragraphs,
    tokenised on every core."""
    return parallel.imap(_encode_chunk, tokenizer, parallel.chunked(paragraphs, CHUNK))


def _encode_chunk(
    tokenizer: Tokenizer, chunk: list[Paragraph]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, lens = tokenizer.encode_sentences([s for p in chunk for s in p])
    return ids, lens, np.fromiter(map(len, chunk), np.int64, len(chunk))


class ArrayWriter:
    """Appends to one flat array file, open for writing, hashing what it writes."""

    def __init__(self, file: BinaryIO, dtype: np.dtype):
        self.file = file
        self.dtype = dtype
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.count += len(values)

    def info(self) -> dict:
        """What meta.json records of the file (its modification time is that of the last
        write: fsync and rename leave it)."""
        self.file.flush()
        return {
            "dtype": self.dtype.name,
            "length": self.count,
            "sha256": self.hash.hexdigest(),
            "mtime_ns": os.fstat(self.file.fileno()).st_mtime_ns,
        }

    def close(self) -> dict:
        """The file's `info`, once it is on disk and closed."""
        info = self.info()
        os.fsync(self.file.fileno())
        self.file.close()
        return info


class _SplitWriter:
    """Appends chunks of (ids, sentence lengths, paragraph sizes) to a split's files; a
    paragraph of size 0 (a BREAK of the corpus reader) starts a new document."""

    def __init__(self, folder: Path, name: str, token_dtype: np.dtype):
        def writer(array: str, dtype: np.dtype) -> ArrayWriter:
            return ArrayWriter(open(folder / f"{name}.{array}", "wb"), dtype)  # noqa: SIM115 (closed by close())

        self.tokens = writer("tokens", token_dtype)
        self.sentences = writer("sentences", np.dtype(np.int64))
        self.paragraphs = writer("paragraphs", np.dtype(np.int64))
        self.documents = writer("documents", np.dtype(np.int64))
        self.sentences.write(np.zeros(1))
        self.paragraphs.write(np.zeros(1))
        self.documents.write(np.zeros(1))
        self.last_start = 0  # the paragraph where the current document starts

    def write(self, ids: np.ndarray, lens: np.ndarray, sizes: np.ndarray) -> None:
        tokens, sentences = self.tokens.count, self.sentences.count - 1  # before this chunk
        paragraphs = self.paragraphs.count - 1
        breaks = sizes == 0
        kept = sizes[~breaks]
        self.tokens.write(ids)
        self.sentences.write(tokens + np.cumsum(lens))
        self.paragraphs.write(sentences + np.cumsum(kept))
        # The paragraph after each break starts a document, unless that one is empty.
        for start in paragraphs + np.cumsum(~breaks)[breaks]:
            if start > self.last_start:
                self.documents.write(np.array([start]))
                self.last_start = int(start)

    def close(self) -> dict:
        if self.paragraphs.count - 1 > self.last_start:  # the last document ends here
            self.documents.write(np.array([self.paragraphs.count - 1]))
        return {a: getattr(self, a).close() for a in ARRAYS}


def write_split(
    folder: Path,
    name: str,
    paragraphs: Iterable[Paragraph],
    tokenizer: Tokenizer,
    progress: Callable[[int], None],
) -> dict:
    """Stream one split's paragraphs through the tokenizer into NAME.{tokens,...}."""
    writer = _SplitWriter(folder, name, token_dtype(len(tokenizer.vocab)))
    try:
        for ids, lens, sizes in _encode_chunks(paragraphs, tokenizer):
            writer.write(ids, lens, sizes)
            progress(len(ids))
    finally:
        meta = writer.close()
    return meta


def write_learning_words(
    folder: Path,
    paragraphs: Iterable[Paragraph],
    min_freq: int,
    lowercase: bool,
    progress: Callable[[int], None],
) -> tuple[dict, Tokenizer]:
    """The training split, tokenised while its word vocabulary is learnt: in one pass, each
    word gets a provisional id (the order of first appearance) and is counted; then the
    vocabulary is taken from the counts, exactly as `train_tokenizer` takes it, and the
    provisional ids are mapped onto it. Training the vocabulary and then tokenising would
    read and split the corpus twice."""
    writer = _SplitWriter(folder, "train", np.dtype(np.uint32))
    first_seen: dict[str, int] = collections.defaultdict(itertools.count().__next__)
    counts = np.zeros(0, np.int64)
    try:
        chunks = parallel.imap(_first_seen_chunk, lowercase, parallel.chunked(paragraphs, CHUNK))
        for local, lens, sizes, words in chunks:
            # Each chunk numbers its own words; map those numbers onto the corpus-wide ones.
            ids = np.fromiter(map(first_seen.__getitem__, words), np.int64, len(words))[local]
            counts = np.bincount(ids, minlength=len(first_seen)) + np.pad(
                counts, (0, len(first_seen) - len(counts))
            )
            writer.write(ids, lens, sizes)
            progress(len(ids))
    finally:
        meta = writer.close()
    words = list(first_seen)  # in provisional-id order
    vocab = build_vocab(dict(zip(words, counts.tolist())), min_freq)
    tokenizer = Tokenizer("word", vocab, lowercase)
    final = np.fromiter(map(tokenizer.index.get, words, itertools.repeat(0)), np.int64, len(words))
    meta["tokens"] = _map_tokens(folder / "train.tokens", final, token_dtype(len(vocab)))
    return meta, tokenizer


def _first_seen_chunk(
    lowercase: bool, chunk: list[Paragraph]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A chunk's words numbered in order of first appearance: (ids, sentence lengths,
    paragraph sizes, the distinct words by number)."""
    ids, lens, words = number_words(split_words([s for p in chunk for s in p], lowercase))
    return ids, lens, np.fromiter(map(len, chunk), np.int64, len(chunk)), words


def _map_tokens(path: Path, table: np.ndarray, dtype: np.dtype) -> dict:
    """Rewrite the uint32 token file at `path` as `table[token]` in `dtype`, reading a few
    MB at a time (read, not mapped: mapped pages would count towards the resident memory);
    the new file's metadata."""
    table = table.astype(dtype)
    info: dict = {}

    def write(out: BinaryIO) -> None:
        writer = ArrayWriter(out, dtype)
        with open(path, "rb") as f:
            while len(block := np.fromfile(f, np.uint32, count=1 << 20)):
                writer.write(table[block])
        info.update(writer.info())

    files.atomic_write(path, write)
    return info
