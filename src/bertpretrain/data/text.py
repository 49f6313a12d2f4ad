"""data=text: a user's plain UTF-8 text files as paragraphs of sentences.

One line of a file is one paragraph, split into sentences by `sentences.py`; blank lines
and the end of each file end a document. Files are read a line at a time, so a corpus need
not fit in memory. A `datasets` dataset (data=hf) is read by hf.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from bertpretrain.data.corpus import (
    BREAK,
    Paragraph,
    changed_while_read,
    line_blocks,
    not_a_regular_file,
)
from bertpretrain.data.sentences import iter_paragraphs
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)


def read_text_files(
    paths: Sequence[str], digest: str | None = None, breaks: bool = False, tell: bool = True
) -> Iterator[Paragraph]:
    """The paragraphs of every file in `paths`, in file order, read a line at a time (a
    corpus need not fit in memory). A user's bad file or an empty result ends in a
    UserError, and so do bytes whose `file_digest` is not `digest` (a file changed since
    it was taken): the last two can only be known at the end of the stream. A single
    string is read as one path. With `breaks`, documents end at blank lines and at the end
    of each file (`iter_paragraphs`). `tell=False` keeps the per-file counts out of the log
    (a second pass over the same bytes)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise UserError("data=text needs files to read: set data.files=[a.txt,b.txt]")
    kept = 0
    read = hashlib.sha256()
    for name in paths:
        path = text_file(name)
        tally = {"seen": 0, "kept": 0}
        yield from iter_paragraphs(_utf8_lines(path, read), tally, breaks)
        if breaks:
            yield BREAK
        read.update(b"\0")  # as file_digest marks a file boundary
        log.log(
            logging.INFO if tell else logging.DEBUG,
            "read %d lines from %s: kept %d paragraphs of 2+ sentences",
            tally["seen"],
            path,
            tally["kept"],
        )
        kept += tally["kept"]
    if not kept:
        raise UserError(
            f"no paragraph with two sentences in data.files ({', '.join(map(str, paths))}): "
            "put one paragraph per line, each of at least two sentences ending in . ! or ? "
            "followed by a capitalised word"
        )
    if digest is not None:
        changed_while_read(", ".join(map(str, paths)), digest, read.hexdigest())


def text_file(name: str, key: str = "data.files") -> Path:
    """`name`, an entry of the setting `key`, as a path checked to be a regular file; why
    not is a UserError naming `key`."""
    if not str(name).strip():
        raise UserError(f"{key} has an empty entry; remove it, or give the file's path")
    path = Path(name).expanduser()
    problem = not_a_regular_file(path)
    if problem == "is a folder":
        raise UserError(
            f"{key}: {path} is a folder, not a text file; list the files in it, "
            f"e.g. {key}=[dir/a.txt,dir/b.txt]"
        )
    if problem == "does not exist":
        raise UserError(
            f"{key}: {path} does not exist; fix the path in {key}=[...] "
            "(relative paths start at the directory you run from)"
        )
    if problem and not problem.startswith("cannot be read"):  # reading says why, below
        raise UserError(f"{key}: {path} {problem}; give regular text files")
    return path


def _utf8_lines(path: Path, read: hashlib._Hash | None = None) -> Iterator[str]:
    """The lines of `path` (split on "\\n" only, a leading BOM dropped), read lazily; not
    UTF-8 or unreadable ends in a UserError that gives the byte offset or the reason."""
    try:
        with path.open("rb") as f:
            for offset, raw in line_blocks(f, read):
                body = raw[3:] if offset == 0 and raw.startswith(b"\xef\xbb\xbf") else raw
                try:
                    yield from body.decode("utf-8").split("\n")
                except UnicodeDecodeError as e:
                    at = offset + len(raw) - len(body) + e.start
                    raise UserError(
                        f"data.files: {path} is not UTF-8 text (bad byte at offset {at}); "
                        "convert it to UTF-8, e.g. iconv -f latin1 -t utf-8"
                    ) from None
    except OSError as e:
        raise UserError(
            f"data.files: cannot read {path}: {e.strerror}; check that it is readable (permissions)"
        ) from None
