"""A downstream task's splits, read from the files GLUE distributes or from the user's own.

`read_task(task)` reads one of GLUE's nine tasks from `task.dir` in exactly the layout
that GLUE's download script (gluebenchmark.com) writes (`TASKS` records it), from the
`datasets` library's copy when `task.dir` is null, or `task=csv`: the user's own
train/dev/test files (.tsv, .csv or .jsonl) with the columns the task config names.

GLUE's files are tab-separated and hold stray quotes (`"` opens no quoted field in them),
so they are read with quoting off, row by row, keeping only the columns a task needs:
MNLI's train.tsv carries parse trees that would be hundreds of MB held as rows. Every
mistake a user can make in the files is one UserError line naming the file, the line
where it applies, and the fix. Reading writes nothing.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertpretrain.config import TaskConfig
from bertpretrain.errors import UserError

CLASSIFICATION, REGRESSION = "classification", "regression"
CSV_SUFFIXES = (".tsv", ".csv", ".jsonl")
HUB_NAME = "nyu-mll/glue"  # the `datasets` library's copy of GLUE


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One GLUE task's files as the download script writes them: `<split>.tsv` in a folder."""

    title: str  # GLUE's own spelling, for messages: "MNLI"
    columns: tuple[str, ...]  # of train/dev: their header row, or the positions' names
    header: bool  # whether train/dev start with a header row (all but CoLA's do)
    text_a: str  # the columns read, in train/dev and (but the label) in test
    text_b: str | None
    label: str
    test_columns: tuple[str, ...]  # test.tsv's header: an index/id column, the texts, no label
    labels: tuple[str, ...] | None  # as written in the files; None: regression (a score)
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    submissions: tuple[str, ...]  # the leaderboard's file name for each test split
    # The `datasets` copy: its text columns and its class names by int label.
    hub_a: str
    hub_b: str | None
    hub_labels: tuple[str, ...] | None

    @property
    def kind(self) -> str:
        return REGRESSION if self.labels is None else CLASSIFICATION

    @property
    def index_column(self) -> str:
        return self.test_columns[0]

    def needed(self) -> tuple[str, ...]:
        """The train/dev columns read."""
        return tuple(c for c in (self.text_a, self.text_b, self.label) if c is not None)


BINARY = ("0", "1")
NLI = ("entailment", "not_entailment")
PAIR = ("index", "sentence1", "sentence2")
MNLI_TEXT = (
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
)
STSB_TEXT = (
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
)

TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        title="CoLA",
        # No header: the source of the sentence, the label, the original author's mark
        # (`*` for unacceptable, often empty) and the sentence.
        columns=("source", "label", "original_mark", "sentence"),
        header=False,
        text_a="sentence",
        text_b=None,
        label="label",
        test_columns=("index", "sentence"),
        labels=BINARY,
        metrics=("matthews_correlation",),
        submissions=("CoLA.tsv",),
        hub_a="sentence",
        hub_b=None,
        hub_labels=BINARY,
    ),
    "sst2": TaskSpec(
        title="SST-2",
        columns=("sentence", "label"),
        header=True,
        text_a="sentence",
        text_b=None,
        label="label",
        test_columns=("index", "sentence"),
        labels=BINARY,
        metrics=("accuracy",),
        submissions=("SST-2.tsv",),
        hub_a="sentence",
        hub_b=None,
        hub_labels=BINARY,
    ),
    "mrpc": TaskSpec(
        title="MRPC",
        # The header of Microsoft's msr_paraphrase_*.txt, BOM and all (read as utf-8-sig).
        columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        header=True,
        text_a="#1 String",
        text_b="#2 String",
        label="Quality",
        test_columns=("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        labels=BINARY,
        metrics=("f1", "accuracy"),
        submissions=("MRPC.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=BINARY,
    ),
    "stsb": TaskSpec(
        title="STS-B",
        columns=(*STSB_TEXT, "score"),
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="score",
        test_columns=STSB_TEXT,
        labels=None,  # a similarity score from 0 to 5
        metrics=("pearson", "spearmanr"),
        submissions=("STS-B.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=None,
    ),
    "qqp": TaskSpec(
        title="QQP",
        columns=("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        header=True,
        text_a="question1",
        text_b="question2",
        label="is_duplicate",
        test_columns=("id", "question1", "question2"),
        labels=BINARY,
        metrics=("f1", "accuracy"),
        submissions=("QQP.tsv",),
        hub_a="question1",
        hub_b="question2",
        hub_labels=BINARY,
    ),
    "mnli": TaskSpec(
        title="MNLI",
        # train's; the dev files have label1..label5 (the annotators') before gold_label.
        columns=(*MNLI_TEXT, "label1", "gold_label"),
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="gold_label",
        test_columns=MNLI_TEXT,
        labels=("contradiction", "entailment", "neutral"),
        metrics=("accuracy",),
        dev_splits=("dev_matched", "dev_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        submissions=("MNLI-m.tsv", "MNLI-mm.tsv"),
        hub_a="premise",
        hub_b="hypothesis",
        hub_labels=("entailment", "neutral", "contradiction"),
    ),
    "qnli": TaskSpec(
        title="QNLI",
        columns=("index", "question", "sentence", "label"),
        header=True,
        text_a="question",
        text_b="sentence",
        label="label",
        test_columns=("index", "question", "sentence"),
        labels=NLI,
        metrics=("accuracy",),
        submissions=("QNLI.tsv",),
        hub_a="question",
        hub_b="sentence",
        hub_labels=NLI,
    ),
    "rte": TaskSpec(
        title="RTE",
        columns=(*PAIR, "label"),
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="label",
        test_columns=PAIR,
        labels=NLI,
        metrics=("accuracy",),
        submissions=("RTE.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=NLI,
    ),
    "wnli": TaskSpec(
        title="WNLI",
        columns=(*PAIR, "label"),  # 1: entailment, as in the files
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="label",
        test_columns=PAIR,
        labels=BINARY,
        metrics=("accuracy",),
        submissions=("WNLI.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=("0", "1"),  # not_entailment, entailment
    ),
}


@dataclass
class Split:
    """One split's examples, column by column."""

    name: str
    text_a: list[str]
    text_b: list[str] | None  # None: a single-text task
    labels: np.ndarray | None  # (N,) int64 ids into label_names, or float32 scores; None: test
    index: list[str]  # test: the file's index/id column; else the example's number

    def __len__(self) -> int:
        return len(self.text_a)


@dataclass
class TaskData:
    name: str
    kind: str  # classification or regression
    label_names: list[str] | None  # None for regression
    metrics: tuple[str, ...]
    splits: dict[str, Split]  # train, the dev split(s), the test split(s) when present
    submissions: dict[str, str]  # test split -> the file its predictions go in
    dev_splits: tuple[str, ...]


def read_task(task: TaskConfig) -> TaskData:
    """The task's train and dev split(s), and its test split(s) where their files exist."""
    if task.name == "csv":
        return _read_csv_task(task)
    if task.name not in TASKS:
        names = ", ".join([*TASKS, "csv"])
        raise UserError(f"unknown task={task.name}; use one of {names}")
    spec = TASKS[task.name]
    if task.dir is None:
        return _read_hub(task.name, spec)
    folder = _folder(task.dir, f"{spec.title}'s train.tsv and {spec.dev_splits[0]}.tsv")
    splits = {}
    for name in ("train", *spec.dev_splits, *spec.test_splits):
        path = folder / f"{name}.tsv"
        if path.is_file():
            splits[name] = _read_glue_file(path, name, task.name, spec)
        elif name not in spec.test_splits:
            raise UserError(
                f"{path} is missing: task={task.name} needs {_expected_files(spec)} in "
                f"task.dir, as the GLUE download script writes them"
            )
    return _task_data(task.name, spec, splits)


def _task_data(name: str, spec: TaskSpec, splits: dict[str, Split]) -> TaskData:
    return TaskData(
        name=name,
        kind=spec.kind,
        label_names=None if spec.labels is None else list(spec.labels),
        metrics=spec.metrics,
        splits=splits,
        submissions=dict(zip(spec.test_splits, spec.submissions)),
        dev_splits=spec.dev_splits,
    )


def _expected_files(spec: TaskSpec) -> str:
    needed = ", ".join(f"{s}.tsv" for s in ("train", *spec.dev_splits))
    optional = ", ".join(f"{s}.tsv" for s in spec.test_splits)
    return f"{needed} ({optional} optional)"


def _folder(directory: str, holding: str) -> Path:
    folder = Path(directory).expanduser()
    if not folder.exists():
        raise UserError(
            f"task.dir={directory} does not exist; point it at the folder holding {holding}"
        )
    if not folder.is_dir():
        raise UserError(
            f"task.dir={directory} is a file, not a folder; point it at the folder holding "
            f"{holding}"
        )
    return folder


# --- GLUE's files -------------------------------------------------------------------------


def _read_glue_file(path: Path, split: str, name: str, spec: TaskSpec) -> Split:
    records = _records(path, "\t", csv.QUOTE_NONE)
    first = next(records, None)
    if first is None:
        raise _empty(path, f"put GLUE's {spec.title} {split}.tsv there")
    test = split in spec.test_splits
    if test or spec.header:
        header = first[1]
        wanted = (spec.index_column, spec.text_a, spec.text_b) if test else spec.needed()
        wanted = tuple(c for c in wanted if c is not None)
        if not test:
            _check_resemblance(header, path, name, spec)
        positions = _glue_positions(header, wanted, path, spec)
        width, what = len(header), "its header row names"
    else:  # CoLA: the first row is an example
        _check_resemblance(first[1], path, name, spec)
        records = itertools.chain([first], records)
        positions = {c: spec.columns.index(c) for c in spec.needed()}
        width, what = len(spec.columns), f"{spec.title}'s layout has"
    table = _take(records, path, positions, width, what)
    if not table.lines:
        raise _empty(path, f"put GLUE's {spec.title} {split}.tsv there")
    index = spec.index_column if test else None
    label = None if test else spec.label
    return _to_split(
        table, split, spec.text_a, spec.text_b, label, index, spec.labels, f"{spec.title}'s"
    )


def _glue_positions(
    header: list[str], wanted: tuple[str, ...], path: Path, spec: TaskSpec
) -> dict[str, int]:
    """Where the wanted columns are in the header row, or the error that says why not."""
    missing = [c for c in wanted if c not in header]
    if not missing:
        return {c: header.index(c) for c in wanted}
    if not set(wanted) & set(header):
        raise UserError(
            f"{path} has no header row: its first line should name the columns "
            f"{', '.join(wanted)} as GLUE's {spec.title} files do; add the header line or "
            "use GLUE's original files"
        )
    raise UserError(
        f"{path} has no column {missing[0]!r} (its columns: {', '.join(header)}); use "
        f"GLUE's original {spec.title} files, whose header names {', '.join(wanted)}"
    )


def _check_resemblance(first: list[str], path: Path, name: str, spec: TaskSpec) -> None:
    """A folder of another task's files is a likely mistake: say which task they fit."""
    like = _looks_like(first)
    if like and name not in like:
        titles = " or ".join(f"{TASKS[n].title}'s" for n in like)
        uses = " or ".join(f"task={n}" for n in like)
        raise UserError(
            f"{path}: this looks like {titles} files; use {uses} or point task.dir at "
            f"{spec.title}'s folder"
        )


def _looks_like(first: list[str]) -> list[str]:
    """The tasks whose train/dev files start like `first`: of those whose header holds all
    the columns they read, the ones reading the most (QNLI's header holds SST-2's columns
    too); or CoLA for a header-less row of its 4 columns with a 0/1 label."""
    if len(first) == 4 and first[1].strip() in BINARY:
        return ["cola"]
    fits = {
        n: len(s.needed()) for n, s in TASKS.items() if s.header and set(s.needed()) <= set(first)
    }
    best = max(fits.values(), default=0)
    return [n for n, count in fits.items() if count == best]


# --- the user's own files (task=csv) ------------------------------------------------------


def _read_csv_task(task: TaskConfig) -> TaskData:
    if not task.text_a or not task.label:
        raise UserError(
            "task=csv needs task.text_a and task.label: the columns of the text and the "
            "label (and task.text_b for a second text)"
        )
    if task.kind not in (CLASSIFICATION, REGRESSION):
        raise UserError(
            f"task.kind={task.kind} is not a kind of task; use classification or regression"
        )
    if task.dir is None:
        raise UserError("task=csv needs task.dir: the folder of its train, dev and test files")
    folder = _folder(task.dir, "train, dev and test files (.tsv, .csv or .jsonl)")
    tables = {}
    for split in ("train", "dev", "test"):
        path = _csv_file(folder, split, required=split != "test")
        if path is not None:
            test = split == "test"
            wanted = [task.text_a, task.text_b, None if test else task.label]
            optional = ["index", "id"] if test else []  # the test split's ids, if any
            tables[split] = _read_table(path, [c for c in wanted if c], optional)
    names = None
    if task.kind == CLASSIFICATION:
        names = sorted({v.strip() for v in tables["train"].values[task.label]})
    splits = {}
    for split, table in tables.items():
        test = split == "test"
        index = next((c for c in ("index", "id") if c in table.values), None) if test else None
        label = None if test else task.label
        splits[split] = _to_split(
            table, split, task.text_a, task.text_b, label, index, names, "the train split's"
        )
    return TaskData(
        name="csv",
        kind=task.kind,
        label_names=names,
        metrics=_csv_metrics(names),
        splits=splits,
        submissions={"test": "test_predictions.tsv"},
        dev_splits=("dev",),
    )


def _csv_metrics(names: list[str] | None) -> tuple[str, ...]:
    if names is None:
        return ("pearson", "spearmanr")
    return ("accuracy", "f1") if len(names) == 2 else ("accuracy",)


def _csv_file(folder: Path, split: str, required: bool) -> Path | None:
    """The one `<split>.tsv|.csv|.jsonl` in the folder."""
    found = sorted(p for p in folder.iterdir() if p.stem == split and p.suffix in CSV_SUFFIXES)
    choices = " or ".join(f"{split}{s}" for s in CSV_SUFFIXES)
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise UserError(f"{folder} holds {names}; keep one {split} file ({choices})")
    if not found and required:
        raise UserError(f"{folder} has no {split} file; task=csv needs {choices} in task.dir")
    return found[0] if found else None


def _read_table(path: Path, wanted: list[str], optional: list[str]) -> _Table:
    """The wanted (and those of the optional present) columns of a .tsv, .csv or .jsonl."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path, wanted, optional)
    # A .tsv is read as GLUE's are (quotes are text); a .csv with the usual quoting.
    delimiter, quoting = (
        ("\t", csv.QUOTE_NONE) if path.suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
    )
    records = _records(path, delimiter, quoting)
    first = next(records, None)
    if first is None:
        raise _empty(path, "add a header row and examples")
    header = first[1]
    for column in wanted:
        if column not in header:
            raise UserError(
                f"{path} has no column {column!r} (its columns: {', '.join(header)}); set "
                "task.text_a, task.text_b and task.label to columns its header row names"
            )
    positions = {c: header.index(c) for c in [*wanted, *optional] if c in header}
    table = _take(records, path, positions, len(header), "its header row names")
    if not table.lines:
        raise _empty(path, "add examples below its header row")
    return table


def _read_jsonl(path: Path, wanted: list[str], optional: list[str]) -> _Table:
    table = _Table(path, [], {})
    for line, text in enumerate(_lines(path), start=1):
        if not text.strip():
            continue
        row = _json_object(text, path, line)
        if not table.lines:  # the optional keys are read if the first object has them
            table.values = {c: [] for c in [*wanted, *optional] if c in wanted or c in row}
        for column, values in table.values.items():
            value = row.get(column)
            if value is None:
                raise UserError(
                    f"{path} line {line} has no value for {column!r} (its keys: "
                    f"{', '.join(row)}); give every line the keys that task.text_a, "
                    "task.text_b and task.label name"
                )
            values.append(value if isinstance(value, str) else str(value))
        table.lines.append(line)
    if not table.lines:
        raise _empty(path, "add one JSON object per line")
    return table


def _json_object(text: str, path: Path, line: int) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {line} is not JSON ({e.msg}); fix the line") from None
    if not isinstance(row, dict):
        raise UserError(f"{path} line {line} is not a JSON object; write one object per line")
    return row


# --- rows -> a split ----------------------------------------------------------------------


@dataclass
class _Table:
    """The columns read from a file, row by row, and each row's line (for messages)."""

    path: Path
    lines: list[int]
    values: dict[str, list[str]]


def _lines(path: Path) -> Iterator[str]:
    """A text file's lines, read as UTF-8 (a BOM dropped: MRPC's files start with one); a
    file that is not UTF-8 is a UserError."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        try:
            yield from file
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def _records(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """Each non-blank row and its line number."""
    reader = csv.reader(_lines(path), delimiter=delimiter, quoting=quoting)
    try:
        for row in reader:
            if any(field.strip() for field in row):
                yield reader.line_num, row
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: {e}; fix the line") from None


def _take(
    records: Iterator[tuple[int, list[str]]],
    path: Path,
    positions: dict[str, int],
    width: int,
    what: str,
) -> _Table:
    """The columns at `positions` of every row; a row shorter than `width` is an error
    (QQP's train.tsv has a few broken lines: better said than read shifted)."""
    table = _Table(path, [], {c: [] for c in positions})
    columns = [(table.values[c], i) for c, i in positions.items()]
    for line, row in records:
        if len(row) < width:
            raise UserError(
                f"{path} line {line} has {len(row)} columns, fewer than the {width} {what}; "
                "fix or remove the line"
            )
        for values, i in columns:
            values.append(row[i])
        table.lines.append(line)
    return table


def _to_split(
    table: _Table,
    name: str,
    text_a: str,
    text_b: str | None,
    label: str | None,
    index: str | None,
    label_names: list[str] | tuple[str, ...] | None,
    whose: str,
) -> Split:
    """A table as a split: class labels as ids into `label_names` (None: scores), the
    index column's values or else each example's number."""
    labels = None
    if label is not None:
        raw = table.values[label]
        labels = (
            _scores(raw, table)
            if label_names is None
            else _class_ids(raw, table, list(label_names), whose)
        )
    return Split(
        name=name,
        text_a=table.values[text_a],
        text_b=None if text_b is None else table.values[text_b],
        labels=labels,
        index=[v.strip() for v in table.values[index]] if index else _numbers(len(table.lines)),
    )


def _numbers(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def _class_ids(raw: list[str], table: _Table, names: list[str], whose: str) -> np.ndarray:
    ids = {n: i for i, n in enumerate(names)}
    out = np.empty(len(raw), dtype=np.int64)
    for row, value in enumerate(raw):
        found = ids.get(value.strip())
        if found is None:
            raise UserError(
                f"{table.path} line {table.lines[row]}: label {value.strip()!r} is not one of "
                f"{whose} labels ({', '.join(names)}); fix the line or check the task"
            )
        out[row] = found
    return out


def _scores(raw: list[str], table: _Table) -> np.ndarray:
    out = np.empty(len(raw), dtype=np.float32)
    for row, value in enumerate(raw):
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise UserError(
                f"{table.path} line {table.lines[row]}: label {value.strip()!r} is not a "
                "number; a regression task's labels are numbers (STS-B's: 0 to 5)"
            )
        out[row] = score
    return out


def _empty(path: Path, fix: str) -> UserError:
    return UserError(f"{path} holds no examples; {fix}")


# --- the `datasets` library's copy --------------------------------------------------------


def _read_hub(name: str, spec: TaskSpec) -> TaskData:
    """GLUE from the `datasets` library (its cache, or the Hub), mapped to GLUE's labels."""
    try:
        import datasets

        # Offline, the Hub client logs a warning per retry before the error we report.
        for logger in ("huggingface_hub", "datasets"):
            logging.getLogger(logger).setLevel(logging.ERROR)
        hub = datasets.load_dataset(HUB_NAME, name)
    except (ImportError, OSError) as e:  # OSError: offline, no network, not found
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise UserError(
            f"cannot load {spec.title} from the datasets library ({reason}); pass "
            f"task.dir=FOLDER with GLUE's {spec.title} files (e.g. from the GLUE download script)"
        ) from None
    splits = {}
    for split in ("train", *spec.dev_splits, *spec.test_splits):
        rows = hub[split.replace("dev", "validation")]
        splits[split] = Split(
            name=split,
            text_a=list(rows[spec.hub_a]),
            text_b=None if spec.hub_b is None else list(rows[spec.hub_b]),
            labels=_hub_labels(rows["label"], spec),
            index=[str(i) for i in rows["idx"]]
            if split in spec.test_splits
            else _numbers(len(rows)),
        )
    return _task_data(name, spec, splits)


def _hub_labels(raw, spec: TaskSpec) -> np.ndarray | None:
    """The copy's int labels as ids into the files' label list; None for its test splits,
    whose labels are all -1."""
    values = np.asarray(list(raw))  # a list or, in datasets >= 4, a Column
    if values.size and (values == -1).all():
        return None
    if spec.labels is None:
        return values.astype(np.float32)
    to_ours = np.array([spec.labels.index(n) for n in spec.hub_labels], dtype=np.int64)
    return to_ours[values.astype(np.int64)]
