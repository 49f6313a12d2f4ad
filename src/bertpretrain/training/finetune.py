"""Fine-tuning: a pretrained encoder and a new classifier trained on a downstream task,
through the same loop as pretraining (`loop.run_job`, `loop.loop`).

What differs from pretraining is set up here: the task's data (data/glue.py), its
classifier (model/classifier.py), an epoch-based schedule (trainer.epochs becomes
max_steps, and the dev splits are evaluated at the end of every epoch), the metrics GLUE
defines (scores.py), and what the run ends with: the summary's `metrics`, and the test
splits' predictions in GLUE's submission format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bertpretrain import distributed
from bertpretrain.config import FinetuneConfig, to_dict
from bertpretrain.data.classification import ClassificationStream, Encoded, encode_split
from bertpretrain.data.glue import TaskData, read_task
from bertpretrain.data.tokenizer import Tokenizer, train_tokenizer
from bertpretrain.data.tokenizer import from_state as tokenizer_from_state
from bertpretrain.memory.budget import peak_memory
from bertpretrain.memory.fit import for_run
from bertpretrain.memory.plan import Workload, micro_batch_size
from bertpretrain.model.bert import BertConfig, count_parameters, describe
from bertpretrain.model.classifier import BertForClassification, ClassifierLoss
from bertpretrain.training import checkpoint, rundir, signals
from bertpretrain.training.loop import run_job, save, validate
from bertpretrain.training.objective import Objective, Stop
from bertpretrain.training.predictions import (
    chosen_epoch,
    dev_metrics,
    predict,
    task_score,
    write_predictions,
)
from bertpretrain.training.progress import Progress, write_hparams
from bertpretrain.training.recipe import with_max_len, with_schedule
from bertpretrain.training.resume import resume_state
from bertpretrain.training.setup import (
    Parts,
    Run,
    apply_threads,
    assemble,
    from_published,
    run_device,
)

log = logging.getLogger("bertpretrain.finetune")

PREDICTIONS = "predictions"  # the run dir's folder of test-set predictions


@dataclass
class FinetuneData:
    """The task as read, the tokenizer, and every split tokenised."""

    task: TaskData
    tokenizer: Tokenizer
    encoded: dict[str, Encoded]
    # the checkpoint or folder `init=` resolved to (`outputs/latest` moves on), or None
    init: str | None = None

    @property
    def train(self) -> Encoded:
        return self.encoded["train"]

    @property
    def vocab(self) -> list[str]:
        return self.tokenizer.vocab


def finetune(cfg: FinetuneConfig, run_dir: Path, record=None) -> dict:
    """Fine-tune as `cfg` says into run_dir; the summary (`loop.run_job` says how)."""
    return run_job(with_max_len(cfg), run_dir, record, set_up, finish)


def set_up(cfg: FinetuneConfig, run_dir: Path, stop, accepted, init_path: Path | None) -> Run:
    """Everything before the first step, as `training.setup.set_up` does for pretraining."""
    ranks = distributed.ranks()
    torch.manual_seed(cfg.trainer.seed)
    device = run_device(cfg.trainer, ranks)
    apply_threads(cfg.speed)
    task = read_task(cfg.task)
    cfg = with_schedule(cfg, len(task.splits["train"].text_a))
    resume = resume_state(cfg.trainer.resume, to_dict(cfg), run_dir)
    pretrained, tokenizer = None, None
    if resume is not None:
        tokenizer = tokenizer_from_state(resume)
    elif init_path is not None:
        pretrained, tokenizer = from_published(init_path)
    else:
        tokenizer = task_tokenizer(cfg, task)
    encoded = _encode(task, tokenizer, cfg.data.max_len)
    data = FinetuneData(task, tokenizer, encoded, str(init_path) if init_path else None)
    if ranks.main:
        accepted()
    _log_data(cfg, data)
    work = Workload(cfg.model, cfg.trainer, cfg.speed, cfg.optim, cfg.data.max_len)
    accum, planned = for_run(work, data, device, ranks.world)
    model = _model(cfg, resume, pretrained, data).to(device)
    del pretrained
    history = list(resume.get("history", [])) if resume is not None else []

    def objective(autocast, micro: int) -> Objective:
        return Objective(
            losses=("loss",),
            stream=ClassificationStream(data.train, cfg.trainer.batch_size, cfg.trainer.seed),
            counts=lambda batch: [len(batch["labels"])],
            validate=_validator(cfg, run_dir, data, model, micro, device, autocast, history),
            record={
                "vocab": tokenizer.vocab,
                "tokenizer": tokenizer.settings(),
                "task": task_record(task),
                "history": history,  # every epoch's dev metrics, for trainer.select
            },
            latest=False,
        )

    parts = Parts(ranks, device, data, model, ClassifierLoss(model), accum, planned)
    return assemble(cfg, run_dir, stop, parts, resume, objective)


def task_tokenizer(cfg: FinetuneConfig, task: TaskData) -> Tokenizer:
    """With no `init=`, a vocabulary learnt from the task's train texts: the baseline of a
    model that has read nothing but the task."""
    train = task.splits["train"]
    texts = train.text_a + (train.text_b or [])
    tok = cfg.tokenizer
    log.info("no init=: learning a %s vocabulary from the task's train split", tok.name)
    return train_tokenizer(tok.name, texts, tok.min_freq, tok.vocab_size, tok.lowercase)


def _encode(task: TaskData, tokenizer: Tokenizer, max_len: int) -> dict[str, Encoded]:
    return {name: encode_split(split, tokenizer, max_len) for name, split in task.splits.items()}


def task_record(task: TaskData) -> dict:
    """What a checkpoint says of its task: enough for `encode`, `export` and predictions."""
    return {
        "name": task.name,
        "kind": task.kind,
        "label_names": task.label_names,
        "metrics": list(task.metrics),
    }


def num_labels(task: dict | TaskData) -> int:
    names = task["label_names"] if isinstance(task, dict) else task.label_names
    return 1 if names is None else len(names)


def _log_data(cfg: FinetuneConfig, data: FinetuneData) -> None:
    sizes = ", ".join(f"{name} {len(enc)}" for name, enc in data.encoded.items())
    cut = data.train.truncated
    log.info(
        "task %s (%s): %s examples; vocabulary of %d; %d epochs of %d steps; %d train "
        "examples cut to data.max_len=%d",
        cfg.task.name,
        data.task.kind,
        sizes,
        len(data.vocab),
        cfg.trainer.epochs,
        cfg.trainer.eval_every,
        cut,
        cfg.data.max_len,
    )


def _model(cfg: FinetuneConfig, resume, pretrained, data: FinetuneData) -> BertForClassification:
    """The classifier: a resumed run's architecture, or the pretrained encoder of `init=`
    with a new head, or random weights of model.*."""
    labels = num_labels(data.task)
    if resume is not None:
        model = BertForClassification(BertConfig(**resume["model_config"]), labels)
    elif pretrained is not None:
        model = BertForClassification(pretrained.config, labels)
        model.bert.load_state_dict(pretrained.bert.state_dict())
    else:
        model = BertForClassification(cfg.model.architecture(len(data.vocab)), labels)
    model.bert.gradient_checkpointing = cfg.speed.gradient_checkpointing
    log.info("model %s: %s", cfg.model.name, describe(model.config, count_parameters(model)))
    return model


def _validator(cfg, run_dir: Path, data: FinetuneData, model, micro, device, autocast, history):
    """Rank 0's evaluation of the dev split(s) at the end of an epoch. It records the
    epoch in `history` and, with trainer.select=best, keeps the best epoch's weights."""
    per_epoch = cfg.trainer.eval_every

    def validate_epoch(stop: Stop, step: int) -> dict | None:
        predictions = {}
        for split in data.task.dev_splits:
            if stop():
                return None
            predictions[split] = predict(model, data.encoded[split], micro, device, autocast)
        metrics = dev_metrics(data.task, predictions, data.encoded)
        # from the step, not from len(history): a signal that skipped an epoch's validation
        # leaves that epoch out instead of renumbering the ones after it
        epoch = step // per_epoch
        best = max((task_score(m) for _, m in history), default=None)
        history.append((epoch, metrics))
        if cfg.trainer.select == "best" and (best is None or task_score(metrics) > best):
            state = {"epoch": epoch, "model": model.state_dict()}
            checkpoint.save(state, run_dir / checkpoint.SUBDIR / checkpoint.BEST)
        log.info("epoch %d of %d (step %d)", epoch, cfg.trainer.epochs, step)
        return metrics

    return validate_epoch


def finish(run: Run, progress: Progress) -> dict:
    """Save, evaluate the last epoch, choose the reported epoch, predict the test splits,
    and write the summary (rank 0)."""
    cfg, data = run.cfg, run.dataset
    max_steps = cfg.trainer.max_steps
    path = save(run, max_steps)  # before the last validation: nothing there loses the weights
    validate(run, max_steps)
    if run.stop:
        signals.stopped(run.stop, max_steps, path, run.run_dir, run.writer, complete=True)
    save(run, max_steps)  # again, now recording the last epoch in its history
    history = run.objective.record["history"]
    epoch, metrics = chosen_epoch(history, cfg.trainer.select)
    if epoch != history[-1][0]:  # select=best, and an earlier epoch was better
        best = checkpoint.load(run.run_dir / checkpoint.SUBDIR / checkpoint.BEST)
        run.model.load_state_dict(best["model"])
    micro = micro_batch_size(cfg.trainer.batch_size, 1, run.accum)
    written = write_predictions(
        run.run_dir / PREDICTIONS,
        data.task,
        data.encoded,
        run.model,
        micro,
        run.device,
        run.autocast,
    )
    write_hparams(run.writer, to_dict(cfg), metrics, {"loss": progress.last["loss"]})
    run.writer.close()
    summary = {
        "command": "finetune",
        "task": cfg.task.name,
        "init": data.init,
        "seed": cfg.trainer.seed,
        "epochs": cfg.trainer.epochs,
        "steps": max_steps,
        "metrics": metrics,
        "metrics_epoch": cfg.trainer.select,
        "epoch": epoch,
        "history": [{"epoch": e, **m} for e, m in history],
        "train_loss": progress.last["loss"],
        "seq_per_s": progress.median_speed(),
        "grad_accum": run.accum,
        "planned_memory": run.planned,
        "peak_memory": peak_memory(run.device),
        "checkpoint": str(path),
        "predictions": written,
        "tensorboard": str(run.run_dir / "tensorboard"),
    }
    rundir.write_summary(run.run_dir, summary)
    log.info(done_line(summary))
    return summary


def done_line(summary: dict) -> str:
    shown = "  ".join(f"{name} {value:.4f}" for name, value in summary["metrics"].items())
    which = "best" if summary["metrics_epoch"] == "best" else "last"
    test = "; test predictions in " + ", ".join(summary["predictions"].values())
    return (
        f"done: {summary['task']}, {summary['epochs']} epochs ({summary['steps']} steps), dev "
        f"{shown} ({which} epoch, {summary['epoch']}), {summary['seq_per_s']:.1f} seq/s; "
        f"checkpoint {summary['checkpoint']}{test if summary['predictions'] else ''}"
    )
