"""data=hf: a text column of a `datasets` dataset as paragraphs of sentences.

One line of a row of the column is one paragraph, split into sentences by `sentences.py`;
a row of several lines (a Wikipedia article) is a document. The split is loaded
memory-mapped and read a batch of rows at a time, so a corpus need not fit in memory.
What `datasets` raises that a user can fix becomes one line (hf_errors.py).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertpretrain.data import hf_errors
from bertpretrain.data.corpus import Paragraph, file_digest
from bertpretrain.data.sentences import iter_paragraphs
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)

_TEXT_DTYPES = ("string", "large_string")
_BATCH_ROWS = 10_000


def read_hf(
    name: str, config: str | None, split: str, text_column: str, **load: Any
) -> list[Paragraph]:
    """The paragraphs of one split of a dataset loaded by the Hugging Face `datasets` library:
    `load_hf` (`load` is its `revision` and `cache_dir`) then `hf_paragraphs`, in memory."""
    ds = load_hf(name, config, split, text_column, **load)
    return list(hf_paragraphs(ds, text_column, hf_description(name, config, split, text_column)))


def load_hf(
    name: str,
    config: str | None,
    split: str,
    text_column: str,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> Any:
    """One split of a dataset (a `datasets.Dataset`, memory-mapped, nothing read yet), checked
    to have `text_column` as text: a Hub name (`Salesforce/wikitext` with config
    `wikitext-103-raw-v1`) or a local folder of data files named by split (train.txt,
    validation.txt; .json, .csv, .parquet work too).

    Does what `datasets.load_dataset(name, config, split=split, revision=revision)` does,
    in its three steps, so that a wrong split or column is reported before a download.
    `cache_dir` is datasets' cache (None: its default, HF_DATASETS_CACHE). datasets' progress
    bars show only on a terminal, as ours do (see `_quiet_off_terminal`).
    """
    _require_datasets()
    source = _hf_source(name)
    config = config or None  # `data.config=` on the command line gives ""
    what = _what(name, config)
    with _quiet_off_terminal(), hf_errors.user_errors(what):
        builder = hf_errors.load_builder(source, name, config, revision, cache_dir, what)
        _check_split(split, _known_splits(builder), what)
        if builder.info.features is not None:  # known from the Hub's metadata: check early
            _check_column(builder.info.features, text_column, what)
        builder.download_and_prepare()
        _check_split(split, list(builder.info.splits), what)  # all known once prepared
        ds = builder.as_dataset(split=split)
    _check_column(ds.features, text_column, what)
    return ds


def hf_description(name: str, config: str | None, split: str, text_column: str) -> str:
    """How messages name a split: `data.name=X (data.config=Y), split S, column C`."""
    return f"{_what(name, config)}, split {split}, column {text_column}"


def _what(name: str, config: str | None) -> str:
    """How messages name a dataset: `data.name=X (data.config=Y)`."""
    return f"data.name={name}" + (f" (data.config={config})" if config else "")


def hf_paragraphs(
    ds: Any, text_column: str, what: str, breaks: bool = False
) -> Iterator[Paragraph]:
    """The paragraphs of a `load_hf` split, one per line of each row of the column, read a
    batch of rows at a time (a corpus need not fit in memory); `what` names the split in
    the log and the error. With `breaks`, a row of several lines (Wikipedia's: an
    article) is a document, and so is the text between WikiText title rows."""
    tally = {"seen": 0, "kept": 0}
    yield from iter_paragraphs(_column_rows(ds, text_column, breaks), tally, breaks)
    log.info(
        "read %d lines of %s: kept %d paragraphs of 2+ sentences",
        tally["seen"],
        what,
        tally["kept"],
    )
    if not tally["kept"]:
        raise UserError(
            f"no row of {what} is a paragraph of two sentences; each row must hold sentences "
            "ending in . ! or ? followed by a capitalised word (or pick another "
            "data.text_column)"
        )


def hf_digest(ds: Any, split: str, text_column: str) -> str | None:
    """sha256 of what defines a `load_hf` split's text without reading it: its Arrow cache
    files, the split expression and the column. None for a dataset held only in memory."""
    files = [Path(f["filename"]) for f in ds.cache_files]
    if not files:
        return None
    parts = f"{split}|{text_column}|{len(ds)}|{file_digest(*files)}"
    return hashlib.sha256(parts.encode()).hexdigest()


def _require_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise UserError(
            "data=hf needs the datasets library: pip install 'bertpretrain[hf]'"
        ) from None


def _hf_source(name: str) -> str:
    """`name` as datasets takes it: a local folder (with ~ expanded) or a Hub name."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file():
        raise UserError(
            f"data.name={name} is a file; datasets reads a folder of files named by split "
            "(train.txt, validation.txt, or .json/.csv/.parquet): set data.name to that folder, "
            "or use data=text data.files=[...] for plain text files"
        )
    if name.startswith(("/", "./", "../", "~")):  # a path, not a Hub name
        raise UserError(
            f"data.name={name} is not an existing folder; fix the path, or give a Hub "
            "dataset name such as Salesforce/wikitext"
        )
    return name


def _known_splits(builder: Any) -> list[str]:
    """The split names a builder knows before downloading (from the Hub's metadata or from
    its data files); empty if it does not know yet."""
    if builder.info.splits:
        return list(builder.info.splits)
    return [str(s) for s in (builder.config.data_files or {})]


def _check_split(split: str, known: list[str], what: str) -> None:
    """`split` may be a split expression (train[:10%], train+validation): check its names."""
    names = [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]
    missing = [n for n in names if n not in known]
    if known and missing:
        raise UserError(
            f"{what} has no split {missing[0]!r}; it has {', '.join(known)}: pick one of those"
        )


def _check_column(features: Any, column: str, what: str) -> None:
    import datasets

    if column not in features:
        raise UserError(
            f"{what} has no column {column!r}; its columns are {', '.join(features)}: "
            "set data.text_column=... to the one holding the text"
        )
    feature = features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in _TEXT_DTYPES):
        texts = [c for c, f in features.items() if getattr(f, "dtype", None) in _TEXT_DTYPES]
        raise UserError(
            f"{what}: column {column!r} holds {feature}, not text; set data.text_column to a "
            f"text column ({', '.join(texts) or 'this dataset has none'})"
        )


def _column_rows(ds: Any, column: str, breaks: bool = False) -> Iterator[str]:
    """The lines of the non-null rows of one column, read in batches so memory stays
    bounded. A row holding a whole document (Wikipedia's) gives one paragraph per line; a
    row of WikiText is one line already."""
    for batch in ds.select_columns([column]).iter(batch_size=_BATCH_ROWS):
        for text in batch[column]:
            if text is not None:
                yield from text.split("\n")
                if breaks and "\n" in text.strip():
                    yield ""  # the end of a document


@contextmanager
def _quiet_off_terminal() -> Iterator[None]:
    """Off a terminal (CI, SLURM logs), datasets' and huggingface_hub's progress bars off for
    the duration, as ours are; their global switches are put back exactly after, and an
    HF_DATASETS_DISABLE_PROGRESS_BARS / HF_HUB_DISABLE_PROGRESS_BARS the user set wins.
    Their logging is left alone: datasets logs only warnings by default."""
    if sys.stderr.isatty():
        yield
        return
    import datasets
    from huggingface_hub import constants as hub_constants

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class
    datasets_was_off = datasets.are_progress_bars_disabled()
    hub_states = dict(hub_tqdm.progress_bar_states)
    if datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None and not datasets_was_off:
        datasets.disable_progress_bars()
    if hub_constants.HF_HUB_DISABLE_PROGRESS_BARS is None:
        hub_tqdm.progress_bar_states["_global"] = False
    try:
        yield
    finally:
        if datasets.are_progress_bars_disabled() != datasets_was_off:
            datasets.enable_progress_bars()
        hub_tqdm.progress_bar_states.clear()
        hub_tqdm.progress_bar_states.update(hub_states)
