"""Reading WikiText-style corpora into paragraphs of tokenised sentences.

The rules are the reference's (d2l.ai, "Pretraining BERT"): a line is a paragraph, kept
only if splitting it on ' . ' gives at least two sentences; text is lower-cased and
sentences are split into tokens on whitespace.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bertpretrain.data.download import fetch_wikitext2
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)

Paragraph = list[list[str]]  # sentences, each a list of tokens


def split_paragraphs(lines: list[str]) -> list[Paragraph]:
    """Paragraphs with at least two sentences, lower-cased and tokenised on whitespace."""
    paragraphs = []
    for line in lines:
        sentences = line.strip().lower().split(" . ")
        if len(sentences) >= 2:
            paragraphs.append([s.split() for s in sentences])
    return paragraphs


def read_split(path: Path) -> list[Paragraph]:
    """Read one `wiki.{split}.tokens` file; a user's bad file ends in a UserError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"corpus file {path} does not exist; point data.dir at a folder holding it"
        ) from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"corpus file {path} is not UTF-8 text (byte {e.start}); convert it to UTF-8"
        ) from None
    except OSError as e:
        raise UserError(
            f"cannot read corpus file {path}: {e.strerror}; check its permissions"
        ) from None
    paragraphs = split_paragraphs(text.split("\n"))  # not splitlines(): \x0c etc. stay in a line
    if not paragraphs:
        raise UserError(
            f"corpus file {path} has no paragraph with two sentences split by ' . '; "
            "a WikiText-style file has one paragraph per line"
        )
    return paragraphs


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
    if path.is_dir():
        raise UserError(
            f"{path} is a folder, not a corpus file; put the file wiki.{split}.tokens there"
        )
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("wiki.*.tokens")) or ["none"]
        raise UserError(
            f"{path} does not exist (found: {', '.join(present)}); "
            f"set data.dir to a folder holding it or pick another split"
        )
    return path
