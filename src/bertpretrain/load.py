"""A trained model for the commands that read one (`encode`, `export`, `init=`): from a run
dir (its newest checkpoint, or the best epoch's where a fine-tuning run reported that
one), a checkpoint file, or a transformers BERT folder.

    from bertpretrain.load import load_model

    loaded = load_model("outputs/latest")
    loaded.model, loaded.tokenizer, loaded.max_len  # BertForPretraining, its tokenizer, limit

A fine-tuning run's checkpoint gives its `BertForClassification` and `task` (its name,
kind and label names); every reader uses `model.bert`, the encoder, or the whole model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bertpretrain.data.tokenizer import Tokenizer, from_state
from bertpretrain.errors import UserError
from bertpretrain.hf import published
from bertpretrain.model.bert import BertConfig, BertForPretraining
from bertpretrain.model.classifier import BertForClassification
from bertpretrain.training import checkpoint, rundir

TRAIN_HINT = "train one with `bertpretrain train model=tiny`"
MIN_LEN = 5  # `<cls> a <sep> b <sep>` with one word per sentence, as training requires


@dataclass
class LoadedModel:
    """A model with its weights loaded and checked, and what its source says about it."""

    model: BertForPretraining | BertForClassification
    tokenizer: Tokenizer
    max_len: int  # the longest input it was trained for, <cls> and <sep> included
    source: Path  # the checkpoint file or transformers folder read
    step: int | None = None  # the checkpoint's step; None for a transformers folder
    val_metrics: dict = field(default_factory=dict)  # the training run's last validation
    task: dict | None = None  # a fine-tuned model's task: name, kind, label_names, metrics


def find_model(path: str | Path | None = None) -> Path:
    """The transformers folder `path`, or the checkpoint it names: a file, or a run dir's
    newest (its best epoch's, `best.pt`, for a fine-tuning run that reported its best
    epoch); None = the newest run's under ./outputs."""
    if path is None:
        return reported(default_checkpoint())
    folder = Path(path).expanduser()
    if published.is_model_folder(folder):
        return folder
    found = checkpoint.resolve(folder)
    return reported(found) if folder.is_dir() else found


def reported(newest: Path) -> Path:
    """The checkpoint whose weights a run's summary reports: `best.pt` beside `newest`
    when the run chose its best epoch (trainer.select=best), so that encode, export and
    init= read the model that scored what summary.json says; else `newest`."""
    best = newest.parent / checkpoint.BEST
    summary = newest.parent.parent / rundir.SUMMARY
    if newest.parent.name != checkpoint.SUBDIR or not (best.is_file() and summary.is_file()):
        return newest
    try:
        chosen = json.loads(summary.read_text(encoding="utf-8")).get("metrics_epoch")
    except (OSError, ValueError, AttributeError):
        return newest  # an unreadable summary is the run's own problem, not the model's
    return best if chosen == "best" else newest


def load_model(path: str | Path | None = None) -> LoadedModel:
    """The model that `find_model(path)` finds. Anything unusable is one UserError."""
    source = find_model(path)
    if published.is_model_folder(source):
        return LoadedModel(*published.load(source), source)
    state = checkpoint.load(source)
    if source.name == checkpoint.BEST:  # the best epoch's weights; the rest as last saved
        state = {**checkpoint.load(checkpoint.resolve(source.parent)), "model": state["model"]}
    model, tokenizer, max_len = _from_checkpoint(state, source)
    metrics = state.get("val_metrics")
    return LoadedModel(
        model,
        tokenizer,
        max_len,
        source,
        state.get("step"),
        metrics if isinstance(metrics, dict) else {},
        state.get("task") if isinstance(state.get("task"), dict) else None,
    )


def _from_checkpoint(state: dict, path: Path) -> tuple[torch.nn.Module, Tokenizer, int]:
    """The model, tokenizer and training max_len of a loaded checkpoint; anything
    inconsistent is one UserError naming what is wrong."""
    try:
        tokenizer = from_state(state)
        config = BertConfig(**state["model_config"])
        if len(tokenizer.vocab) != config.vocab_size:
            raise ValueError(f"{len(tokenizer.vocab)} tokens but {config.vocab_size} embeddings")
        model = _architecture(state, config)
        model.load_state_dict(state["model"])  # strict: every weight there, of the right shape
        max_len = int(state["config"]["data"]["max_len"])
        if not MIN_LEN <= max_len <= config.max_position:
            raise ValueError(
                f"its max_len {max_len} does not fit its position table of {config.max_position}"
            )
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:160]
        raise UserError(
            f"{path} has no usable model, vocabulary or config ({type(e).__name__}: {detail}); "
            "give a checkpoint written by `bertpretrain train` or `finetune`"
        ) from None
    return model, tokenizer, max_len


def _architecture(state: dict, config: BertConfig) -> torch.nn.Module:
    """The model a checkpoint holds: pretraining's, or a fine-tuning run's classifier (one
    output for a regression task, else one per label)."""
    task = state.get("task")
    if task is None:
        return BertForPretraining(config)
    labels = task["label_names"]
    return BertForClassification(config, 1 if labels is None else len(labels))


def default_checkpoint(root: str | Path = ".") -> Path:
    """The newest run's checkpoint: `outputs/latest` (kept by `train`), else the newest
    `outputs/**/checkpoints/step_*.pt` by modification time."""
    outputs = Path(root) / "outputs"
    latest = outputs / rundir.LATEST
    if latest.is_dir():
        return checkpoint.resolve(latest)
    found = list(outputs.glob(f"**/{checkpoint.SUBDIR}/step_*.pt"))
    if not found:
        raise UserError(
            f"no checkpoint found: there is no {latest} and no {outputs}/**/{checkpoint.SUBDIR}/"
            f"step_*.pt here; {TRAIN_HINT}, or pass --checkpoint FILE_OR_RUN_DIR"
        )
    return max(found, key=lambda p: p.stat().st_mtime)
