"""The prepared corpus: every split tokenised once into memory-mapped arrays, then reused.

A store is a folder in the cache, `store-KEY/`, keyed by the corpus's digests and the
exact tokenizer. Each split is four flat arrays, written while the corpus streams past
(split_writer.py: chunks of paragraphs go through the tokenizer and onto disk, so memory
does not grow with the corpus), and read back with `np.memmap`, so opening a store costs nothing and
only the pages a batch touches are ever read:

    SPLIT.tokens      every sentence's token ids, concatenated (uint16, or uint32 when
                      the vocabulary has more than 65536 entries)
    SPLIT.sentences   int64 offsets into tokens: sentence i is tokens[s[i]:s[i+1]]
    SPLIT.paragraphs  int64 offsets into sentences: paragraph j is sentences p[j]..p[j+1]
    SPLIT.documents   int64 offsets into paragraphs: document k (a Wikipedia article, the
                      text between blank lines, a file) is paragraphs d[k]..d[k+1]

`meta.json` records each array's dtype, length, sha256 and modification time. A store is
built in a temp folder and renamed into place whole, so a kill leaves nothing a later run
trusts; one whose files disagree with its metadata (truncated, corrupted) is rebuilt with
a warning. The layout follows nanoGPT's `train.bin` and Megatron-LM's indexed dataset (`.bin` + `.idx`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bertpretrain import files
from bertpretrain.data import cache
from bertpretrain.data.corpus import Corpus, Paragraph
from bertpretrain.data.split_writer import ARRAYS, write_learning_words, write_split
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split's arrays (memory-mapped from a store, or in memory)."""

    tokens: np.ndarray
    sentences: np.ndarray  # (S + 1,) offsets into tokens
    paragraphs: np.ndarray  # (P + 1,) offsets into sentences
    documents: np.ndarray  # (D + 1,) offsets into paragraphs
    source: tuple | None = None  # (folder, name, meta) of a memory-mapped split

    def __reduce_ex__(self, protocol):
        # A process that receives a mapped split (a DataLoader worker under spawn) maps the
        # files itself; pickling np.memmap would copy the whole corpus into the message.
        if self.source is not None:
            return _open_split, (*self.source, False)
        return super().__reduce_ex__(protocol)

    @property
    def sentence_lens(self) -> np.ndarray:
        return np.diff(self.sentences)

    @property
    def paragraph_sizes(self) -> np.ndarray:
        return np.diff(self.paragraphs)

    def __len__(self) -> int:
        """The number of paragraphs."""
        return len(self.paragraphs) - 1


@dataclass
class Store:
    tokenizer: Tokenizer
    train: Split
    valid: Split | None
    path: Path


def encode_split(paragraphs: Iterable[Paragraph], tokenizer: Tokenizer) -> Split:
    """A split in memory: what `prepare` writes to disk, for small corpora and tests."""
    with tempfile.TemporaryDirectory() as folder:
        meta = write_split(Path(folder), "split", paragraphs, tokenizer, lambda n: None)
        mapped = _open_split(Path(folder), "split", meta, False)
        return Split(*(np.array(getattr(mapped, array)) for array in ARRAYS))


def _open_split(folder: Path, name: str, meta: dict, verify: bool) -> Split:
    """A split's arrays, memory-mapped; a ValueError says how the files disagree with
    `meta`."""
    arrays = {}
    for array in ARRAYS:
        path, info = folder / f"{name}.{array}", meta[array]
        dtype = np.dtype(info["dtype"])
        size = path.stat().st_size
        if size != info["length"] * dtype.itemsize:
            raise ValueError(
                f"{path.name} holds {size} bytes, its metadata says {info['length']} values"
            )
        # Hashing a large store at every start would cost seconds (a Wikipedia-sized one
        # minutes); as git and make do, a file not modified since it was written is
        # trusted, and one that was (an edit, a copy) is hashed.
        if verify and path.stat().st_mtime_ns != info.get("mtime_ns"):
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != info["sha256"]:
                    raise ValueError(f"{path.name} does not match its sha256")
        arrays[array] = (
            np.memmap(path, dtype=dtype, mode="r", shape=(info["length"],))
            if info["length"]
            else np.zeros(0, dtype)
        )
    return Split(**arrays, source=(folder, name, meta))


def store_key(corpus: Corpus, tokenizer: Tokenizer) -> str:
    """Everything that changes a store: both splits' digests and the exact tokenizer."""
    vocab = hashlib.sha256("\n".join(tokenizer.vocab).encode()).hexdigest()
    settings = json.dumps(tokenizer.settings(), sort_keys=True)
    return cache.key(cache.STORE, corpus.train_digest, corpus.valid_digest, vocab, settings)


def open_store(path: Path, tokenizer: Tokenizer, verify: bool = True) -> Store:
    """The store at `path`; a ValueError (or OSError) when it is incomplete or damaged."""
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != cache.STORE:
        raise ValueError(f"it has layout version {meta.get('version')}, not {cache.STORE}")
    train = _open_split(path, "train", meta["train"], verify)
    valid = _open_split(path, "valid", meta["valid"], verify) if meta.get("valid") else None
    return Store(tokenizer, train, valid, path)


def prepare(corpus: Corpus, tokenizer: Tokenizer, cache_dir: Path | None) -> Store:
    """The corpus's store for `tokenizer`: found in `cache_dir`, or built there. Without
    a cache dir it is built in a temp folder that lives as long as the process."""
    if cache_dir is not None:
        files.remove_orphans(cache_dir)  # temp files and folders of writers that were killed
        store = _cached(cache_dir / f"store-{store_key(corpus, tokenizer)}", tokenizer)
        if store is not None:
            return store

    def write_train(tmp: Path, progress: Callable[[int], None]) -> tuple[dict, Tokenizer]:
        return write_split(tmp, "train", corpus.read_train(), tokenizer, progress), tokenizer

    return _build(corpus, cache_dir, write_train)


def prepare_learning_words(
    corpus: Corpus, min_freq: int, lowercase: bool, cache_dir: Path | None
) -> Store:
    """A store built while its word vocabulary (`store.tokenizer`) is learnt, in one pass
    over the corpus: for a corpus whose vocabulary is not cached yet."""
    if cache_dir is not None:
        files.remove_orphans(cache_dir)

    def write_train(tmp: Path, progress: Callable[[int], None]) -> tuple[dict, Tokenizer]:
        return write_learning_words(tmp, corpus.read_train(), min_freq, lowercase, progress)

    return _build(corpus, cache_dir, write_train)


def _cached(path: Path, tokenizer: Tokenizer) -> Store | None:
    """The store at `path` if it is whole; a damaged one is removed, with a warning."""
    if not path.is_dir():
        return None
    try:
        store = open_store(path, tokenizer)
        log.info("prepared corpus from cache %s", path)
        return store
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("rebuilding the prepared corpus %s: %s", path, e)
        shutil.rmtree(path, ignore_errors=True)
        return None


def _build(corpus: Corpus, cache_dir: Path | None, write_train: Callable) -> Store:
    """Write the store into a temp folder in `cache_dir`, then rename it into place under
    its key (known once the training split, and so the vocabulary, is written)."""
    if cache_dir is None:
        cache_dir = Path(tempfile.mkdtemp(prefix="bertpretrain-store-"))
        atexit.register(shutil.rmtree, cache_dir, True)
    started = time.perf_counter()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with files.temp_folder(cache_dir / "store") as tmp:
            meta, tokenizer = _write_store(tmp, corpus, write_train)
            path = cache_dir / f"store-{store_key(corpus, tokenizer)}"
            _publish(tmp, path, tokenizer)
    except OSError as e:
        raise UserError(
            f"could not write the prepared corpus to {cache_dir}: "
            f"{files.failure(e, cache_dir)}; free space there or set data.root to another "
            "folder"
        ) from None
    log.info(
        "prepared %s: %d training tokens in %d sentences, %d paragraphs, in %.1f s (%s)",
        corpus.name,
        meta["train"]["tokens"]["length"],
        meta["train"]["sentences"]["length"] - 1,
        meta["train"]["paragraphs"]["length"] - 1,
        time.perf_counter() - started,
        path,
    )
    return open_store(path, tokenizer, verify=False)


def _write_store(folder: Path, corpus: Corpus, write_train: Callable) -> tuple[dict, Tokenizer]:
    """Both splits' arrays and `meta.json` in `folder`; the metadata and the tokenizer."""
    meta: dict = {"version": cache.STORE}
    with _progress(f"preparing {corpus.name}") as progress:
        meta["train"], tokenizer = write_train(folder, progress)
        if corpus.read_valid is not None:
            meta["valid"] = write_split(folder, "valid", corpus.read_valid(), tokenizer, progress)
    meta["tokenizer"] = tokenizer.settings()
    files.atomic_write(folder / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
    return meta, tokenizer


def _publish(tmp: Path, path: Path, tokenizer: Tokenizer) -> None:
    """Rename the finished store into place; a whole one already there (another process
    was first) is kept, a damaged one replaced."""
    if not files.place_folder(tmp, path, lambda there: _cached(there, tokenizer) is not None):
        log.info("another process prepared %s first; using its store", path)


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Callable[[int], None]]:
    """A tokens/s bar on a terminal; a log line every 30 s otherwise."""
    if sys.stderr.isatty():
        with tqdm(desc=what, unit=" tokens", unit_scale=True, dynamic_ncols=True) as bar:
            yield bar.update
        return
    state = {"tokens": 0, "start": time.perf_counter(), "said": time.perf_counter()}

    def update(n: int) -> None:
        state["tokens"] += n
        now = time.perf_counter()
        if now - state["said"] >= 30:
            rate = state["tokens"] / (now - state["start"])
            log.info("%s: %d tokens so far, %.0f tokens/s", what, state["tokens"], rate)
            state["said"] = now

    yield update
