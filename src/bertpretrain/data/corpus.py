"""Corpora as the example builder sees them, and reading WikiText-style files.

A `Corpus` is a training split and an optional validation split, each read on demand as
paragraphs of sentences, plus a digest of what defines each (the cache keys). WikiText's
rules are the reference's code (d2l 1.0.3's `_read_wiki`), which differ from its prose: a
line is kept if the *raw* line splits on ' . ' into at least two parts, and its sentences
are the parts of the stripped line. Sentences stay text: the tokenizer
(data/tokenizer.py) lower-cases and splits them. Other corpora are read by data/text.py
(plain text files) and data/hf.py (`datasets` datasets).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bertpretrain import files
from bertpretrain.data.download import fetch_wikitext2
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)

Paragraph = list[str]  # its sentences, as text
# In a stream read with breaks=True, an empty paragraph marks the start of a new document
# (a Wikipedia article): BERT's pairing fills its sequences from whole documents.
BREAK: Paragraph = []
# Where a WikiText article starts: before its title line, " = Title = " (section headings
# are " = = Name = = "). Zero-width, so the title line stays where the reference reads it.
ARTICLE = re.compile(r"(?=^ *= [^=\n][^\n]* = *$)", re.M)


@dataclass
class Corpus:
    """A corpus as the builder sees it: each split's paragraphs, read when needed, and a
    digest of what defines each split (the cache keys)."""

    name: str  # for messages: a file, a folder or a dataset
    read_train: Callable[[], Iterable[Paragraph]]
    train_digest: str
    read_valid: Callable[[], Iterable[Paragraph]] | None = None
    valid_digest: str = "-"


def wikitext(train: Path, valid: Path | None, memo: Path | None = None) -> Corpus:
    """WikiText-style files (`wiki.{split}.tokens`) as a corpus. Each reader checks that it
    read the very bytes its digest was taken from, so a file replaced in between can never
    be cached under the other version's key."""
    train_digest = file_digest(train, memo=memo)
    valid_digest = file_digest(valid, memo=memo) if valid else "-"
    return Corpus(
        str(train),
        lambda: read_split(train, train_digest, breaks=True),
        train_digest,
        (lambda: read_split(valid, valid_digest, breaks=True)) if valid else None,
        valid_digest,
    )


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` cannot be read as a corpus file, or None when it is a regular file (or a
    link to one). A FIFO or device would block or never end, so only regular files pass."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device)"
    return None


def changed_while_read(path: str, expected: str, read: str) -> None:
    if read != expected:
        raise UserError(
            f"corpus {path} changed while this run read it (its bytes differ from those its "
            "cache key was taken from); rerun once nothing writes to it"
        )


def file_digest(*paths: Path, memo: Path | None = None) -> str:
    """sha256 of the files' bytes, in order. With `memo` (a JSON file in the cache), files
    whose path, size, inode and modification time are unchanged since they were hashed
    keep their digest: hashing a 20 GB corpus at every start would take half a minute. A
    store is only ever built from bytes that match the digest (`changed_while_read`)."""
    key = _stat_key(paths) if memo is not None else None
    known = _read_memo(memo) if key is not None else {}
    if key in known:
        return known[key]
    digest = _hash_files(paths)
    if key is not None:
        known = dict(list(known.items())[-(MEMO_ENTRIES - 1) :]) | {key: digest}
        with contextlib.suppress(OSError):  # a read-only cache only costs the hashing
            memo.parent.mkdir(parents=True, exist_ok=True)
            files.atomic_write(memo, lambda f: f.write(json.dumps(known).encode()))
    return digest


MEMO_ENTRIES = 256


def _stat_key(paths: tuple[Path, ...]) -> str | None:
    parts = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            return None  # hashing says what is wrong
        parts.append(f"{path.resolve()}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}")
    return "\n".join(parts)


def _read_memo(memo: Path) -> dict:
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _hash_files(paths: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for path in paths:
        try:
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except FileNotFoundError:
            raise UserError(f"corpus file {path} does not exist; check the path") from None
        except OSError as e:
            raise UserError(
                f"cannot read corpus file {path}: {e.strerror}; check its permissions"
            ) from None
        h.update(b"\0")  # a file boundary: [ab, c] and [a, bc] differ
    return h.hexdigest()


def text_digest(paragraphs: Iterable[Paragraph]) -> str:
    """sha256 of paragraphs read from a source without files of its own (a `datasets`
    dataset held in memory)."""
    h = hashlib.sha256()
    for p in paragraphs:
        h.update("\t".join(p).encode())
        h.update(b"\n")
    return h.hexdigest()


def split_paragraphs(lines: list[str]) -> list[Paragraph]:
    """The reference's paragraphs: `line.strip().split(' . ')` of every line whose raw
    `line.split(' . ')` has at least two parts.

    The test runs before `strip()`, as in d2l's code: a one-sentence line ending in ' . '
    (most WikiText lines end that way) passes it and is kept as a one-sentence paragraph.
    It gives no pair of its own, but its words count for the vocabulary and it can be
    drawn as the random second sentence of a pair, exactly as in the reference.
    """
    return [line.strip().split(" . ") for line in lines if len(line.split(" . ")) >= 2]


def line_blocks(f: BinaryIO, read: hashlib._Hash | None = None) -> Iterator[tuple[int, bytes]]:
    """An open file's bytes in blocks of whole lines (about 1 MB, or one longer line), each
    with its offset in the file; `read` hashes every byte. A block boundary never falls
    inside a UTF-8 character (none contains the byte \n), and a block costs one Python
    step where a line would cost one each."""
    offset, rest = 0, bytearray()
    while block := f.read(1 << 20):
        if read is not None:
            read.update(block)
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no line ends in this block
            rest += block
            continue
        whole = bytes(rest) + block[:cut]
        yield offset, whole
        offset += len(whole)
        rest = bytearray(block[cut:])
    if rest:
        yield offset, bytes(rest)


def read_split(path: Path, digest: str | None = None, breaks: bool = False) -> Iterator[Paragraph]:
    """The paragraphs of one `wiki.{split}.tokens` file, read line by line (a corpus need not
    fit in memory); with `breaks`, a BREAK before each article (at its title line). A
    user's bad file ends in a UserError, and so do bytes whose `file_digest` is not
    `digest` (the file changed since it was taken): both can only be known once the file is
    read, so they end the iteration."""
    read = hashlib.sha256()
    pairs = False  # whether some paragraph has two sentences, as a pair needs
    try:
        with path.open("rb") as f:
            for offset, raw in line_blocks(f, read):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(
                        f"corpus file {path} is not UTF-8 text (byte {offset + e.start}); "
                        "convert it to UTF-8"
                    ) from None
                # Universal newlines, as the reference's open(...).readlines() reads the
                # file; not splitlines(): \x0c etc. stay inside a line.
                text = text.replace("\r\n", "\n").replace("\r", "\n")
                for i, article in enumerate(ARTICLE.split(text) if breaks else [text]):
                    if i:
                        yield BREAK
                    for paragraph in split_paragraphs(article.split("\n")):
                        pairs = pairs or len(paragraph) >= 2
                        yield paragraph
    except FileNotFoundError:
        raise UserError(
            f"corpus file {path} does not exist; point data.dir at a folder holding it"
        ) from None
    except OSError as e:
        raise UserError(
            f"cannot read corpus file {path}: {e.strerror}; check its permissions"
        ) from None
    if digest is not None:
        read.update(b"\0")  # as file_digest marks the end of a file
        changed_while_read(str(path), digest, read.hexdigest())
    if not pairs:
        raise UserError(
            f"corpus file {path} has no paragraph with two sentences split by ' . '; "
            "a WikiText-style file has one paragraph per line"
        )


def corpus_dir(data_dir: str | None, root: str, urls: list[str], sha1: str) -> Path:
    """The folder holding wiki.{split}.tokens: `data.dir` if given, else the download cache."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise UserError(
                f"data.dir={data_dir} is not a folder; point it at a folder holding "
                "wiki.train.tokens (or choose the splits with data.train_split/data.valid_split)"
            )
        return path
    return fetch_wikitext2(Path(root).expanduser(), urls, sha1)


def split_path(folder: Path, split: str) -> Path:
    path = folder / f"wiki.{split}.tokens"
    problem = not_a_regular_file(path)
    if problem == "does not exist":
        present = sorted(p.name for p in folder.glob("wiki.*.tokens")) or ["none"]
        raise UserError(
            f"{path} does not exist (found: {', '.join(present)}); "
            f"set data.dir to a folder holding it or pick another split"
        )
    if problem:
        raise UserError(f"{path} {problem}; put the text file wiki.{split}.tokens there")
    return path
