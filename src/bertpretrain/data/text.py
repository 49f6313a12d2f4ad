"""A user's own corpus as paragraphs of sentences: plain text files, or a `datasets` dataset.

Both readers (`read_text_files` for `data=text`, `hf_paragraphs` for `data=hf`) stream
paragraphs, each a list of sentence strings in their original case,
stripped at both ends and not tokenised (the tokenizer lower-cases and splits them later).
One line of a file, or of a row of a dataset's text column, is one paragraph. As in the
reference (d2l.ai, "Pretraining BERT"), a paragraph is kept only if it has at least two
sentences, since next-sentence prediction needs pairs; empty lines are skipped.

Sentence splitting (`split_sentences`) is a deterministic rule, no model and no dependency:

A sentence ends after a run of terminators `.` `!` `?` `…` (so `...` too), plus any closing
quotes or brackets right after them (`"` `'` `”` `’` `»` `)` `]` `}`), when all of this holds:

1. whitespace follows, then optionally opening quotes or brackets (`"` `'` `“` `‘` `«` `(`
   `[` `{`, spaces between them allowed, as in tokenised text), then an uppercase letter
   (any script: `É`, `Ж`), a digit, or WikiText's unknown-word token `<unk>`;
2. if the terminator is a single `.` glued to the word before it (the non-space characters
   before it, leading quotes and brackets dropped), that word is not
   - an abbreviation in `ABBREVIATIONS` (as listed, or with its first letter capitalised:
     `vs` and `Vs`; `No` but not `no`), nor
   - an initial or a chain of initials: uppercase letters joined by dots (`J.`, `J.R.R.`,
     `U.S.`), except the single letter `I` (the pronoun, the numeral in "World War I.").

Because whitespace must follow the terminator, decimals (`3.5`), versions (`v1.2.3`) and
URLs never split. Tokenised WikiText (`wiki.*.tokens`) splits too: its spaced period
` . ` has no word glued to it, so ` . The` ends a sentence like `. The` does, and
WikiText's spaced decimals (`3 @.@ 5`) have no lone `.`. Each sentence keeps its
terminator and its text as is ("It is red .", "Is it?"); only its ends are stripped.

Known limits, all from the rule being local:
- an abbreviation not in the list, followed by a capitalised word, splits
  ("a Ph.D. Student", "Assn. Members");
- a real sentence end on a listed abbreviation or an initial does not split
  ("... in the U.S. The next", "... and so on, etc. Then", "... plan B. Then");
- a sentence starting in lower case does not split ("... end. and then"), nor one starting
  with a symbol other than the quotes and brackets above;
- a numbered list item ("1. Introduction") splits after the number;
- scripts without case (Chinese, Arabic, Hindi, ...) and terminators without a following
  space (`。`) never split, so such a corpus keeps no paragraph;
- in tokenised text a spaced quote after ` . ` goes with the next sentence (` . " The`),
  as it does in the reference's `line.split(" . ")`.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from bertpretrain.data.corpus import ARTICLE, BREAK, line_blocks
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)

Paragraph = list[str]  # sentences, original case, not tokenised

# Words that end in "." without ending a sentence. Compared as listed or with the first
# letter capitalised; uppercase initials (J., U.S.) are a rule of their own, not listed.
ABBREVIATIONS = frozenset(
    # titles and ranks
    ["Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "Rev", "Hon", "Gov", "Sen", "Rep"]
    + ["Gen", "Col", "Lt", "Capt", "Sgt"]
    # Latin and references
    + ["vs", "etc", "e.g", "i.e", "cf", "al", "ca", "approx", "No", "Nos", "Fig", "Vol", "pp"]
    # places and companies
    + ["Mt", "Inc", "Ltd", "Co", "Corp", "Bros"]
    # months, as in "Jan. 5"
    + ["Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"]
)
_ABBREVIATIONS = ABBREVIATIONS | {a[0].upper() + a[1:] for a in ABBREVIATIONS}

# (terminators)(closers) whitespace (openers, spaces allowed between them as in tokenised text)
_CANDIDATE = re.compile(r"""(?P<end>(?P<term>[.!?…]+)["'”’»)\]}]*)\s+(?:["'“‘«(\[{]\s*)*""")
_OPENERS = "\"'“‘«([{"
_INITIALS = re.compile(r"[^\W\d_](?:\.[^\W\d_])*")  # J, J.R.R, U.S (letters; case checked apart)
_UNK = "<unk>"  # WikiText's unknown word: counts as a capitalised sentence start


def split_sentences(paragraph: str) -> list[str]:
    """The sentences of `paragraph` by the rule in this module's docstring, ends stripped."""
    sentences = []
    start = 0
    for m in _CANDIDATE.finditer(paragraph):
        nxt = m.end()  # first letter of the would-be next sentence
        if nxt == len(paragraph):
            break
        char = paragraph[nxt]
        if not (char.isupper() or char.isdigit() or paragraph.startswith(_UNK, nxt)):
            continue
        if m["term"] == "." and _no_end_after(_word_before(paragraph, m.start())):
            continue
        sentences.append(paragraph[start : m.end("end")].strip())
        start = m.end("end")
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def _word_before(text: str, i: int) -> str:
    """The run of non-space characters ending at `i`, without leading quotes or brackets."""
    j = i
    while j > 0 and not text[j - 1].isspace():
        j -= 1
    return text[j:i].lstrip(_OPENERS)


def _no_end_after(word: str) -> bool:
    """A "." glued to `word` does not end a sentence: an abbreviation or initials."""
    if word in _ABBREVIATIONS:
        return True
    return word != "I" and word.isupper() and _INITIALS.fullmatch(word) is not None


def paragraphs_from_lines(lines: Iterable[str]) -> tuple[list[Paragraph], int]:
    """Each line split into sentences; the paragraphs with at least two, and the number of
    non-empty lines seen."""
    tally = {"seen": 0, "kept": 0}
    return list(iter_paragraphs(lines, tally)), tally["seen"]


def iter_paragraphs(
    lines: Iterable[str], tally: dict[str, int], breaks: bool = False
) -> Iterator[Paragraph]:
    """`paragraphs_from_lines` as a stream; `tally` counts the non-empty lines "seen" and
    the paragraphs "kept". With `breaks`, a blank line or a WikiText title line
    (" = Title = ") yields a BREAK: a new document starts, as in google-research/bert's
    input format (blank lines between documents)."""
    for line in lines:
        if breaks and (not line.strip() or ARTICLE.match(line)):
            yield BREAK
        line = line.strip()
        if not line:
            continue
        tally["seen"] += 1
        sentences = split_sentences(line)
        if len(sentences) >= 2:
            tally["kept"] += 1
            yield sentences


# --- data=text: plain UTF-8 files, one paragraph per line --------------------------------


def read_text_files(
    paths: Sequence[str], digest: str | None = None, breaks: bool = False
) -> Iterator[Paragraph]:
    """The paragraphs of every file in `paths`, in file order, read a line at a time (a
    corpus need not fit in memory). A user's bad file or an empty result ends in a
    UserError, and so do bytes whose `file_digest` is not `digest` (a file changed since
    it was taken): the last two can only be known at the end of the stream. A single
    string is read as one path. With `breaks`, documents end at blank lines and at the end
    of each file (`iter_paragraphs`)."""
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
        log.info(
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
        from bertpretrain.data.corpus import changed_while_read

        changed_while_read(", ".join(map(str, paths)), digest, read.hexdigest())


def text_file(name: str) -> Path:
    from bertpretrain.data.corpus import not_a_regular_file

    path = Path(name).expanduser()
    problem = not_a_regular_file(path)
    if problem == "is a folder":
        raise UserError(
            f"data.files: {path} is a folder, not a text file; list the files in it, "
            "e.g. data.files=[dir/a.txt,dir/b.txt]"
        )
    if problem == "does not exist":
        raise UserError(
            f"data.files: {path} does not exist; fix the path in data.files=[...] "
            "(relative paths start at the directory you run from)"
        )
    if problem and not problem.startswith("cannot be read"):  # reading says why, below
        raise UserError(f"data.files: {path} {problem}; give regular text files")
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


# --- data=hf: a text column of a `datasets` dataset, one paragraph per line of a row -----

_TEXT_DTYPES = ("string", "large_string")
_BATCH_ROWS = 10_000


def read_hf(
    name: str,
    config: str | None,
    split: str,
    text_column: str,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> list[Paragraph]:
    """The paragraphs of one split of a dataset loaded by the Hugging Face `datasets` library:
    `load_hf` then `hf_paragraphs`."""
    ds = load_hf(name, config, split, text_column, revision, cache_dir)
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
    datasets = _import_datasets()
    source = _hf_source(name)
    config = config or None  # `data.config=` on the command line gives ""
    what = f"data.name={name}" + (f" (data.config={config})" if config else "")
    with _quiet_off_terminal(), _user_errors(what, name, config):
        builder = datasets.load_dataset_builder(
            source, config, revision=revision, cache_dir=cache_dir
        )
        _check_split(split, _known_splits(builder), what)
        if builder.info.features is not None:  # known from the Hub's metadata: check early
            _check_column(builder.info.features, text_column, what)
        builder.download_and_prepare()
        ds = builder.as_dataset(split=split)
    _check_column(ds.features, text_column, what)
    return ds


def hf_description(name: str, config: str | None, split: str, text_column: str) -> str:
    """How messages name a split: `data.name=X (data.config=Y), split S, column C`."""
    what = f"data.name={name}" + (f" (data.config={config})" if config else "")
    return f"{what}, split {split}, column {text_column}"


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
    from bertpretrain.data.corpus import file_digest

    files = [Path(f["filename"]) for f in ds.cache_files]
    if not files:
        return None
    parts = f"{split}|{text_column}|{len(ds)}|{file_digest(*files)}"
    return hashlib.sha256(parts.encode()).hexdigest()


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError(
            "data=hf needs the datasets library: pip install 'bertpretrain[hf]'"
        ) from None
    return datasets


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
        _raise_unknown_split(missing[0], known, what)


def _raise_unknown_split(split: str, known: list[str], what: str) -> NoReturn:
    raise UserError(f"{what} has no split {split!r}; it has {', '.join(known)}: pick one of those")


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


@contextmanager
def _user_errors(what: str, name: str, config: str | None) -> Iterator[None]:
    """datasets' exceptions for what a user can fix, as one-line UserErrors."""
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

    try:
        yield
    except ConnectionError:  # offline, or no network, and not in the cache
        raise UserError(
            f"cannot reach the Hugging Face Hub for {what} and it is not in the cache "
            "(offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set, or no network); load it once "
            "online, or set data.name to a local folder of data files (train.txt, validation.txt)"
        ) from None
    except DatasetNotFoundError as e:  # no such dataset or revision, or gated
        raise UserError(
            f"{what}: {_one_line(e)}; check the name on huggingface.co/datasets and "
            "data.revision, and for a gated dataset log in with `hf auth login`"
        ) from None
    except EmptyDatasetError:
        raise UserError(
            f"{what} holds no data files; put files named by split in it (train.txt, "
            "validation.txt, or .json/.csv/.parquet)"
        ) from None
    except FileNotFoundError as e:
        raise UserError(
            f"{what}: {_one_line(e)}; set data.name to a Hub dataset or a local folder"
        ) from None
    except DatasetGenerationError as e:  # a data file datasets cannot parse
        raise UserError(
            f"{what}: cannot read its data files ({_one_line(e.__cause__ or e)}); fix or "
            "remove the bad file"
        ) from None
    except ValueError as e:
        message = str(e)
        if message.startswith("Config name is missing"):
            raise UserError(
                f"data.name={name} has several configs: set data.config to one of "
                f"{_listed(message)}"
            ) from None
        if message.startswith("BuilderConfig"):
            raise UserError(
                f"data.name={name} has no config {config!r}; set data.config to one of "
                f"{_listed(message)}"
            ) from None
        if message.startswith("Unknown split"):
            split = re.search(r'"(.*?)"', message)
            _raise_unknown_split(split[1] if split else "?", _listed(message).split(", "), what)
        raise
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e):
            raise
        raise UserError(
            f"{what} is a dataset with a loading script, which the datasets library no longer "
            "runs; pick a dataset of data files (e.g. Salesforce/wikitext)"
        ) from None


def _listed(message: str) -> str:
    """The names in the first [...] of a datasets message, comma-separated."""
    found = re.search(r"\[(.*?)\]", message)
    return ", ".join(re.findall(r"'([^']*)'", found[1])) if found else "?"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
