"""A downstream task as read into memory (`TaskData` and its `Split`s), and the reading of
a text file's rows into a split that GLUE's files (data/glue.py) and the user's own
(data/task_files.py) share.

Rows are read one at a time, keeping only the columns a task needs: MNLI's train.tsv
carries parse trees that would be hundreds of MB held as rows. Every mistake a user can
make in a file is one UserError naming the file, the line where it applies, and the fix.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertpretrain.errors import UserError

CLASSIFICATION, REGRESSION = "classification", "regression"


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


def task_folder(directory: str, holding: str) -> Path:
    """`task.dir` as a folder, or the error that says what it should hold."""
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


@dataclass
class Table:
    """The columns read from a file, row by row, and each row's line (for messages)."""

    path: Path
    lines: list[int]
    values: dict[str, list[str]]


def text_lines(path: Path) -> Iterator[str]:
    """A text file's lines, read as UTF-8 (a BOM dropped: MRPC's files start with one); a
    file that is not UTF-8 is a UserError."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        try:
            yield from file
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def read_rows(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """Each non-blank row and its line number."""
    reader = csv.reader(text_lines(path), delimiter=delimiter, quoting=quoting)
    try:
        for row in reader:
            if any(field.strip() for field in row):
                yield reader.line_num, row
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: {e}; fix the line") from None


def take_columns(
    records: Iterator[tuple[int, list[str]]],
    path: Path,
    positions: dict[str, int],
    width: int,
    what: str,
) -> Table:
    """The columns at `positions` of every row; a row shorter than `width` is an error
    (QQP's train.tsv has a few broken lines: better said than read shifted)."""
    table = Table(path, [], {c: [] for c in positions})
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


def to_split(
    table: Table,
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
        index=[v.strip() for v in table.values[index]]
        if index
        else example_numbers(len(table.lines)),
    )


def example_numbers(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def _class_ids(raw: list[str], table: Table, names: list[str], whose: str) -> np.ndarray:
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


def _scores(raw: list[str], table: Table) -> np.ndarray:
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


def no_examples(path: Path, fix: str) -> UserError:
    return UserError(f"{path} holds no examples; {fix}")
