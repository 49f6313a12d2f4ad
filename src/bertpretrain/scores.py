"""GLUE's metrics and its leaderboard's submission files.

- `compute`: the metrics by name, each computed by scikit-learn or SciPy (well-kept reference
  implementations), never by hand.
- `write_submission`: the `index<TAB>prediction` file the GLUE server takes per task.

The score table of fine-tuning runs that `bertpretrain glue` prints is score_table.py.

Degenerate inputs give a value, never a warning or a traceback:
- matthews_correlation is 0.0 when the predictions or the labels are all one class
  (scikit-learn's definition);
- f1 is 0.0 when neither the predictions nor the labels hold the positive class 1;
- pearson and spearmanr are nan when either side is constant or there are fewer than two
  examples: a correlation is undefined there, and nan (unlike 0) shows that a regression
  head collapsed to one value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bertpretrain import files
from bertpretrain.errors import UserError

# GLUE's metrics per task, in the order the GLUE paper lists them.
METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearmanr"),
    "qqp": ("f1", "accuracy"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


# --- metrics -----------------------------------------------------------------------------


# scikit-learn and SciPy are imported where a metric is computed, which a fine-tuning run
# does on rank 0 alone. Imported by every process of a torchrun run (and by `train`), they
# cost seconds of start-up, and a 2-rank resume test aborted once in seven runs
# (`terminate called without an active exception`), against none in twelve without them.


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    from sklearn import metrics as sk

    return sk.accuracy_score(labels, predictions)


def _f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    found = sorted(set(np.unique(labels).tolist()) | set(np.unique(predictions).tolist()))
    if not set(found) <= {0, 1}:
        raise UserError(
            f"f1 scores a 2-class task with classes 0 and 1, found classes {found[:10]}; "
            "use accuracy or matthews_correlation for this task"
        )
    from sklearn import metrics as sk

    # zero_division=0.0: scikit-learn's own value when there is no positive at all, without
    # the warning that would repeat it on every evaluation.
    return sk.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0)


def _matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    from sklearn import metrics as sk

    with warnings.catch_warnings():
        # scikit-learn warns when both sides are one and the same class; MCC is 0.0 there
        warnings.filterwarnings("ignore", message="A single label was found")
        return sk.matthews_corrcoef(labels, predictions)


def _correlation(test: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """SciPy's `test` (pearsonr, spearmanr): the statistic alone."""

    def score(predictions: np.ndarray, labels: np.ndarray) -> float:
        from scipy import stats

        if len(labels) < 2:  # pearsonr raises below two; undefined, as for a constant side
            return math.nan
        with warnings.catch_warnings():
            # a constant side: SciPy warns and returns nan, the value documented above
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            return getattr(stats, test)(predictions, labels)[0]

    return score


_COMPUTE: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": _correlation("pearsonr"),
    "spearmanr": _correlation("spearmanr"),
}

# Public for the score table, which counts only these of a run's metrics (a loss is not a score).
NAMES = tuple(_COMPUTE)


def compute(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """Each metric of `names` of `predictions` against `labels` (array-likes of one length:
    class ids for accuracy, f1 and matthews_correlation, floats for pearson and spearmanr),
    as plain floats in the order of `names`."""
    unknown = [name for name in names if name not in _COMPUTE]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}; use one of: {', '.join(_COMPUTE)}")
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"{predictions.shape} predictions for {labels.shape} labels")
    if len(labels) == 0:
        raise UserError(
            "there are no examples to score: the evaluation split is empty; check its file"
        )
    return {name: float(_COMPUTE[name](predictions, labels)) for name in names}


# --- submission files --------------------------------------------------------------------


def write_submission(
    path: Path, index: Sequence, predictions: Sequence, label_names: Sequence[str] | None = None
) -> None:
    """GLUE's submission file at `path`: the header `index<TAB>prediction`, then one line per
    example. A prediction is `label_names[class_id]` for a classification task (the label
    as the task's files write it: entailment, 0, 1, ...), or a float with 3 decimals for
    regression (`label_names` None). Written whole or not at all."""
    if len(index) != len(predictions):
        raise ValueError(f"{len(index)} indices for {len(predictions)} predictions")
    shown = [
        _regression(value) if label_names is None else label_names[int(value)]
        for value in predictions
    ]
    lines = ["index\tprediction", *(f"{i}\t{p}" for i, p in zip(index, shown))]
    text = "\n".join(lines) + "\n"
    files.atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def _regression(value) -> str:
    # + 0.0 turns the -0.0 of a tiny negative into 0.0: "-0.000" reads as a sign error
    return f"{round(float(value), 3) + 0.0:.3f}"
