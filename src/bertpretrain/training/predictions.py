"""A fine-tuned model's predictions: every example's class (or score), the dev splits'
metrics as GLUE defines them, the epoch a run reports, and the test splits written in
GLUE's submission format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from bertpretrain import scores
from bertpretrain.data.classification import Encoded
from bertpretrain.data.classification import eval_batches as task_batches
from bertpretrain.data.glue import TaskData


@torch.no_grad()
def predict(model, encoded: Encoded, batch_size: int, device, autocast) -> np.ndarray:
    """Class ids (or scores, for a regression) of every example of a split, in order."""
    was_training = model.training
    model.eval()
    out = []
    for batch in task_batches(encoded, batch_size):
        with autocast():
            logits = model(
                batch["tokens"].to(device),
                batch["segments"].to(device),
                batch["valid_lens"].to(device),
            )
        out.append(logits if model.regression else logits.argmax(-1))
    model.train(was_training)
    return (
        torch.cat(out).float().cpu().numpy() if model.regression else torch.cat(out).cpu().numpy()
    )


def dev_metrics(
    task: TaskData, predictions: dict[str, np.ndarray], encoded: dict[str, Encoded]
) -> dict:
    """GLUE's metrics of each dev split; a second dev split's (MNLI mismatched) named
    with `_mm`."""
    metrics = {}
    for i, split in enumerate(task.dev_splits):
        found = scores.compute(task.metrics, predictions[split], encoded[split].labels)
        metrics |= {f"{name}{'_mm' if i else ''}": value for name, value in found.items()}
    return metrics


def task_score(metrics: dict) -> float:
    """One figure per epoch to pick the best by: the mean of the task's metrics; -inf when
    it is undefined (a constant prediction's correlation is nan), so any defined one wins."""
    score = float(np.mean(list(metrics.values())))
    return -math.inf if math.isnan(score) else score


def chosen_epoch(history: list, select: str) -> tuple[int, dict]:
    """The epoch the summary reports: the last, or the one with the best task score."""
    if select == "best":
        epoch, metrics = max(history, key=lambda item: task_score(item[1]))
    else:
        epoch, metrics = history[-1]
    return int(epoch), dict(metrics)


def write_predictions(
    folder: Path, task: TaskData, encoded: dict[str, Encoded], model, batch_size, device, autocast
) -> dict[str, str]:
    """Each test split's predictions in GLUE's submission format, in `folder`; the files."""
    written = {}
    for split, name in task.submissions.items():
        if split not in encoded:
            continue
        folder.mkdir(exist_ok=True)
        found = predict(model, encoded[split], batch_size, device, autocast)
        scores.write_submission(folder / name, task.splits[split].index, found, task.label_names)
        written[split] = str(folder / name)
    return written
