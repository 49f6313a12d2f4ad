"""A downstream task's splits, read from the files GLUE distributes or from the user's own.

`read_task(task)` reads one of GLUE's nine tasks from `task.dir` in exactly the layout
that GLUE's download script (gluebenchmark.com) writes (data/glue_tasks.py's `TASKS`
records it), from the `datasets` library's copy when `task.dir` is null, or `task=csv`:
the user's own train/dev/test files (data/task_files.py). `Split` and `TaskData`, what it
returns, live in data/task_splits.py and are importable from here.

GLUE's files are tab-separated and hold stray quotes (`"` opens no quoted field in them),
so they are read with quoting off, row by row, keeping only the columns a task needs.
Every mistake a user can make in the files is one UserError line naming the file, the
line where it applies, and the fix. Reading writes nothing.
"""

from __future__ import annotations

import csv
import itertools
import logging
from pathlib import Path

import numpy as np

from bertpretrain.config import TaskConfig
from bertpretrain.data.glue_tasks import BINARY, TASKS, TaskSpec
from bertpretrain.data.task_files import read_csv_task
from bertpretrain.data.task_splits import (
    Split,
    TaskData,
    example_numbers,
    no_examples,
    read_rows,
    take_columns,
    task_folder,
    to_split,
)
from bertpretrain.errors import UserError

__all__ = ["TASKS", "Split", "TaskData", "TaskSpec", "read_task"]

HUB_NAME = "nyu-mll/glue"  # the `datasets` library's copy of GLUE


def read_task(task: TaskConfig) -> TaskData:
    """The task's train and dev split(s), and its test split(s) where their files exist."""
    if task.name == "csv":
        return read_csv_task(task)
    if task.name not in TASKS:
        names = ", ".join([*TASKS, "csv"])
        raise UserError(f"unknown task={task.name}; use one of {names}")
    spec = TASKS[task.name]
    if task.dir is None:
        return _read_hub(task.name, spec)
    folder = task_folder(task.dir, f"{spec.title}'s train.tsv and {spec.dev_splits[0]}.tsv")
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


# --- GLUE's files -------------------------------------------------------------------------


def _read_glue_file(path: Path, split: str, name: str, spec: TaskSpec) -> Split:
    records = read_rows(path, "\t", csv.QUOTE_NONE)
    first = next(records, None)
    if first is None:
        raise no_examples(path, f"put GLUE's {spec.title} {split}.tsv there")
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
    table = take_columns(records, path, positions, width, what)
    if not table.lines:
        raise no_examples(path, f"put GLUE's {spec.title} {split}.tsv there")
    index = spec.index_column if test else None
    label = None if test else spec.label
    return to_split(
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
            else example_numbers(len(rows)),
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
