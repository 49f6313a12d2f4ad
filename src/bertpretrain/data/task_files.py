"""`task=csv`: the user's own task, read from train, dev and (optional) test files in
`task.dir`, each a .tsv, .csv or .jsonl with the columns the task config names.

A .tsv is read as GLUE's are (tab-separated, quotes are text); a .csv with the usual
quoting; a .jsonl as one JSON object per line. The labels are the train split's, sorted.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bertpretrain.config import TaskConfig
from bertpretrain.data.task_splits import (
    CLASSIFICATION,
    REGRESSION,
    Table,
    TaskData,
    no_examples,
    read_rows,
    take_columns,
    task_folder,
    text_lines,
    to_split,
)
from bertpretrain.errors import UserError

CSV_SUFFIXES = (".tsv", ".csv", ".jsonl")


def read_csv_task(task: TaskConfig) -> TaskData:
    """The user's task in `task.dir`: its train and dev files, and its test file if any."""
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
    folder = task_folder(task.dir, "train, dev and test files (.tsv, .csv or .jsonl)")
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
        splits[split] = to_split(
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


def _read_table(path: Path, wanted: list[str], optional: list[str]) -> Table:
    """The wanted (and those of the optional present) columns of a .tsv, .csv or .jsonl."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path, wanted, optional)
    # A .tsv is read as GLUE's are (quotes are text); a .csv with the usual quoting.
    delimiter, quoting = (
        ("\t", csv.QUOTE_NONE) if path.suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
    )
    records = read_rows(path, delimiter, quoting)
    first = next(records, None)
    if first is None:
        raise no_examples(path, "add a header row and examples")
    header = first[1]
    for column in wanted:
        if column not in header:
            raise UserError(
                f"{path} has no column {column!r} (its columns: {', '.join(header)}); set "
                "task.text_a, task.text_b and task.label to columns its header row names"
            )
    positions = {c: header.index(c) for c in [*wanted, *optional] if c in header}
    table = take_columns(records, path, positions, len(header), "its header row names")
    if not table.lines:
        raise no_examples(path, "add examples below its header row")
    return table


def _read_jsonl(path: Path, wanted: list[str], optional: list[str]) -> Table:
    table = Table(path, [], {})
    for line, text in enumerate(text_lines(path), start=1):
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
        raise no_examples(path, "add one JSON object per line")
    return table


def _json_object(text: str, path: Path, line: int) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {line} is not JSON ({e.msg}); fix the line") from None
    if not isinstance(row, dict):
        raise UserError(f"{path} line {line} is not a JSON object; write one object per line")
    return row
