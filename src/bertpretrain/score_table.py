"""The score table of fine-tuning runs that `bertpretrain glue` prints: every run's
summary.json under a folder, as cramming and the BERT papers report GLUE: per init, per task
the median over seeds (`score_table`), printed as text, markdown or JSON (`format_table`).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from bertpretrain import scores
from bertpretrain.errors import UserError

# What a task's score averages: MNLI's also counts dev mismatched, which fine-tuning reports
# as "accuracy_mm" beside "accuracy" (dev matched).
SCORED: dict[str, tuple[str, ...]] = {**scores.METRICS, "mnli": ("accuracy", "accuracy_mm")}

SUMMARY = "summary.json"  # training.rundir.SUMMARY; not imported from there: it loads torch
FORMATS = ("text", "markdown", "json")


@dataclass(frozen=True)
class MetricRow:
    """One metric of a task over its seeds (fractions, as computed: 0.843, not 84.3)."""

    name: str
    median: float
    min: float
    max: float
    seeds: int


@dataclass(frozen=True)
class TaskRow:
    task: str
    score: float  # the mean of the metrics' medians
    metrics: tuple[MetricRow, ...]


@dataclass(frozen=True)
class InitTable:
    """The tasks fine-tuned from one init, with the dev metrics of one epoch choice."""

    init: str | None
    metrics_epoch: str  # "last" or "best": which epoch's dev metrics the runs report
    tasks: tuple[TaskRow, ...]
    average: float  # the mean of the tasks' scores


@dataclass(frozen=True)
class Table:
    folder: str
    runs: int  # the fine-tuning summaries the table counts
    inits: tuple[InitTable, ...]


@dataclass(frozen=True)
class _Run:
    path: Path
    task: str
    init: str | None
    seed: int
    metrics_epoch: str
    metrics: dict[str, float]


def score_table(folder: Path) -> Table:
    """The table of every fine-tuning run under `folder`, any depth (a Hydra multirun dir
    holds one sub-dir per job). Runs are grouped by init and by metrics_epoch: the dev
    figures of the last epoch and of the best one are different experiments. The average is
    over the tasks present: it compares with a paper's only over the same tasks (BERT and
    cramming leave WNLI out). Two runs of one task, init and seed are refused: a median
    would count that seed twice."""
    folder = Path(folder)
    runs = _find_runs(folder)
    if not runs:
        raise UserError(
            f"no fine-tuning runs under {folder} (no {SUMMARY} of `bertpretrain finetune`); "
            "pass the folder that holds them, e.g. the multirun/ dir of a finetune sweep"
        )
    groups: dict[tuple, dict[str, list[_Run]]] = {}
    for run in runs:
        groups.setdefault((run.init, run.metrics_epoch), {}).setdefault(run.task, []).append(run)
    inits = []
    for (init, epoch), tasks in sorted(groups.items(), key=lambda kv: _group_order(kv[0])):
        rows = tuple(_task_row(task, tasks[task]) for task in sorted(tasks, key=_task_order))
        average = statistics.fmean(row.score for row in rows)
        inits.append(InitTable(init, epoch, rows, average))
    return Table(str(folder), len(runs), tuple(inits))


def _find_runs(folder: Path) -> list[_Run]:
    # resolve(): a link to a run dir (e.g. outputs/latest) does not count that run twice
    paths = sorted({path.resolve() for path in folder.rglob(SUMMARY) if path.is_file()})
    return [run for run in map(_read_summary, paths) if run is not None]


def _read_summary(path: Path) -> _Run | None:
    """The fine-tuning run whose summary is at `path`; None for another command's."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise UserError(
            f"{path} cannot be read as JSON ({reason}); rerun that fine-tuning or remove the file"
        ) from None
    if not isinstance(summary, dict) or summary.get("command") != "finetune":
        return None

    def bad(field: str, what: str) -> UserError:
        return UserError(
            f"{path}: {field!r} should be {what}, found {summary.get(field)!r}; rerun that "
            "fine-tuning or remove the file"
        )

    task, init, seed = summary.get("task"), summary.get("init"), summary.get("seed")
    epoch, found = summary.get("metrics_epoch"), summary.get("metrics")
    if not isinstance(task, str) or not task:
        raise bad("task", "a task name")
    if init is not None and not isinstance(init, str):
        raise bad("init", "a path, a name or null")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise bad("seed", "an integer")
    if epoch not in ("last", "best"):
        raise bad("metrics_epoch", '"last" or "best"')
    if not isinstance(found, dict) or not all(_number(v) for v in found.values()):
        raise bad("metrics", "an object of metric names and numbers")
    values = {name: math.nan if v is None else float(v) for name, v in found.items()}
    return _Run(path, task, init, seed, epoch, values)


def _number(value) -> bool:
    """A metric's value: a number, or null where the run wrote nan as JSON's null."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _task_row(task: str, runs: list[_Run]) -> TaskRow:
    seeds: dict[int, Path] = {}
    for run in runs:
        if run.seed in seeds:
            raise UserError(
                f"{seeds[run.seed]} and {run.path} are both {task} with seed {run.seed} from "
                f"the same init; remove one, or pass a folder that holds only one of them"
            )
        seeds[run.seed] = run.path
    names = _scored(task, runs[0])
    metrics = []
    for name in names:
        lacking = next((run.path for run in runs if name not in run.metrics), None)
        if lacking is not None:
            raise UserError(
                f"{lacking}: the metrics of task {task} lack {name!r}; rerun that fine-tuning "
                "or remove the file"
            )
        metrics.append(_spread(name, [run.metrics[name] for run in runs]))
    score = statistics.fmean(metric.median for metric in metrics)
    return TaskRow(task, score, tuple(metrics))


def _scored(task: str, run: _Run) -> tuple[str, ...]:
    """The metrics a task's score averages: GLUE's for a GLUE task; for a task of the user's
    own (csv), those of its first run that `compute` knows (a loss is not a score)."""
    if task in SCORED:
        return SCORED[task]
    names = tuple(name for name in run.metrics if name in scores.NAMES)
    if not names:
        raise UserError(
            f"{run.path}: task {task} reports none of the metrics {', '.join(scores.NAMES)}; "
            "rerun that fine-tuning or remove the file"
        )
    return names


def _spread(name: str, values: list[float]) -> MetricRow:
    # one nan seed (a diverged run) makes the row nan: visible, rather than silently dropped
    if any(math.isnan(v) for v in values):
        return MetricRow(name, math.nan, math.nan, math.nan, len(values))
    return MetricRow(name, statistics.median(values), min(values), max(values), len(values))


def _group_order(key: tuple[str | None, str]) -> tuple:
    init, epoch = key
    return (init is not None, init or "", epoch)


def _task_order(task: str) -> tuple[int, str]:
    """GLUE's tasks in the GLUE paper's order, then the user's own by name."""
    order = list(scores.METRICS)
    return (order.index(task) if task in order else len(order), task)


# --- printing ----------------------------------------------------------------------------


def format_table(table: Table, fmt: str) -> str:
    """`table` as aligned columns for a terminal ("text"), a GitHub table ("markdown"),
    both with scores x100 to one decimal as papers print them, or "json" (the numbers
    unrounded, fractions as computed; nan as null)."""
    if fmt == "json":
        return json.dumps(_nan_to_none(asdict(table)), indent=1)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    render = _text if fmt == "text" else _markdown
    blocks = [render(group) for group in table.inits]
    return "\n\n".join(blocks)


def _nan_to_none(value):
    """JSON has no nan: strict readers refuse Python's NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _x100(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.1f}"


def _title(group: InitTable, quote: str = "") -> str:
    init = "none" if group.init is None else f"{quote}{group.init}{quote}"
    return f"init: {init} (dev metrics of the {group.metrics_epoch} epoch, x100)"


_HEADER = ("task", "score", "metric", "median", "min", "max", "seeds")


def _cells(group: InitTable) -> list[tuple[str, ...]]:
    """The table's cells, row by row: a task's first metric on its row, the others below."""
    rows = []
    for task in group.tasks:
        for i, m in enumerate(task.metrics):
            first = (task.task, _x100(task.score)) if i == 0 else ("", "")
            rows.append((*first, m.name, _x100(m.median), _x100(m.min), _x100(m.max), str(m.seeds)))
    rows.append(("average", _x100(group.average), "", "", "", "", ""))
    return rows


def _text(group: InitTable) -> str:
    rows = [_HEADER, *_cells(group)]
    widths = [max(len(row[col]) for row in rows) for col in range(len(_HEADER))]
    left = {0, 2}  # names to the left, numbers to the right
    lines = [
        "  ".join(
            cell.ljust(w) if col in left else cell.rjust(w)
            for col, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]
    return "\n".join([_title(group), *lines])


def _markdown(group: InitTable) -> str:
    cells = _cells(group)
    average = cells.pop()
    lines = [
        f"### {_title(group, quote='`')}",  # in code quotes, a path's _ or * is no emphasis
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|:--|--:|:--|--:|--:|--:|--:|",
        *("| " + " | ".join(row) + " |" for row in cells),
        f"| **{average[0]}** | **{average[1]}** |" + " |" * 5,
    ]
    return "\n".join(lines)
