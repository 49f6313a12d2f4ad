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
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bertpretrain import distributed, scores
from bertpretrain.config import FinetuneConfig, to_dict
from bertpretrain.data.classification import ClassificationStream, Encoded, encode_split
from bertpretrain.data.classification import eval_batches as task_batches
from bertpretrain.data.glue import TaskData, read_task
from bertpretrain.data.tokenizer import Tokenizer, train_tokenizer
from bertpretrain.data.tokenizer import from_state as tokenizer_from_state
from bertpretrain.errors import UserError
from bertpretrain.memory.budget import peak_memory
from bertpretrain.memory.fit import for_run
from bertpretrain.memory.plan import Workload, micro_batch_size
from bertpretrain.model.bert import BertConfig, count_parameters, describe
from bertpretrain.model.classifier import BertForClassification, ClassifierLoss
from bertpretrain.training import checkpoint, rundir, signals
from bertpretrain.training.loop import run_job, save, validate
from bertpretrain.training.objective import Objective, Stop
from bertpretrain.training.optimize import make_optimizer, make_scheduler
from bertpretrain.training.progress import Progress, open_writer, write_hparams
from bertpretrain.training.resume import resume_state
from bertpretrain.training.setup import (
    Run,
    apply_threads,
    autocast_for,
    from_published,
    make_module,
    run_device,
)

log = logging.getLogger("bertpretrain.finetune")

# optim.lr=null: BERT's 2e-5 from BERT-base's width up (its paper searched 2e-5 to 5e-5);
# narrower models such as tiny (hidden 128) learn too slowly there and take 1e-4.
BERT_LR, NARROW_LR, NARROW_BELOW = 2e-5, 1e-4, 768
BEST = "best.pt"  # the best epoch's weights, kept when trainer.select=best
PREDICTIONS = "predictions"  # the run dir's folder of test-set predictions


@dataclass
class FinetuneData:
    """The task as read, the tokenizer, and every split tokenised."""

    task: TaskData
    tokenizer: Tokenizer
    encoded: dict[str, Encoded]

    @property
    def train(self) -> Encoded:
        return self.encoded["train"]

    @property
    def vocab(self) -> list[str]:
        return self.tokenizer.vocab


def finetune(cfg: FinetuneConfig, run_dir: Path, record=None) -> dict:
    """Fine-tune as `cfg` says into run_dir; the summary (`loop.run_job` says how)."""
    return run_job(cfg, run_dir, record, set_up, finish)


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
    data = FinetuneData(task, tokenizer, _encode(task, tokenizer, cfg.data.max_len))
    if ranks.main:
        accepted()
    _log_data(cfg, data)
    work = Workload(cfg.model, cfg.trainer, cfg.speed, cfg.optim, cfg.data.max_len)
    accum, planned = for_run(work, data, device, ranks.world)
    model = _model(cfg, resume, pretrained, data).to(device)
    del pretrained
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.trainer.max_steps)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        checkpoint.set_rng_state(resume["rng"])
        start = resume["step"]
    if ranks.rank > 0:  # the same weights everywhere, but each rank its own dropout masks
        torch.manual_seed(cfg.trainer.seed + 1_000_003 * ranks.rank + start)
    writer = open_writer(run_dir / "tensorboard", purge_step=start + 1) if ranks.main else None
    autocast = autocast_for(cfg.speed, device, model.config)
    history = list(resume.get("history", [])) if resume is not None else []
    micro = micro_batch_size(cfg.trainer.batch_size, ranks.world, accum)
    objective = Objective(
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
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        stop=stop,
        ranks=ranks,
        device=device,
        dataset=data,
        objective=objective,
        model=model,
        module=make_module(cfg.speed, ClassifierLoss(model), device, ranks),
        optimizer=optimizer,
        scheduler=scheduler,
        autocast=autocast,
        accum=accum,
        planned=planned,
        start=start,
        writer=writer,
        saved=checkpoint.list_checkpoints(run_dir)[-1:],
    )


def with_schedule(cfg: FinetuneConfig, examples: int) -> FinetuneConfig:
    """`cfg` with max_steps = epochs x the train split's full batches and a validation at
    the end of every epoch; a warmup_fraction becomes warmup_steps, and optim.lr=null the
    model's default. The checkpoints record these, and a resume derives the same."""
    trainer = cfg.trainer
    per_epoch = examples // trainer.batch_size
    if per_epoch == 0:
        raise UserError(
            f"the train split of task={cfg.task.name} has {examples} examples, fewer than "
            f"trainer.batch_size={trainer.batch_size}; lower trainer.batch_size"
        )
    steps = trainer.epochs * per_epoch
    optim = cfg.optim
    warmup = optim.warmup_steps or math.ceil(optim.warmup_fraction * steps)
    lr = optim.lr or (BERT_LR if cfg.model.hidden_size >= NARROW_BELOW else NARROW_LR)
    return replace(
        cfg,
        trainer=replace(trainer, max_steps=steps, eval_every=per_epoch),
        optim=replace(optim, lr=lr, warmup_steps=warmup, warmup_fraction=0.0),
    )


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


def dev_metrics(task: TaskData, predictions: dict[str, np.ndarray], data: FinetuneData) -> dict:
    """GLUE's metrics of each dev split; a second dev split's (MNLI mismatched) named
    with `_mm`."""
    metrics = {}
    for i, split in enumerate(task.dev_splits):
        found = scores.compute(task.metrics, predictions[split], data.encoded[split].labels)
        metrics |= {f"{name}{'_mm' if i else ''}": value for name, value in found.items()}
    return metrics


def task_score(metrics: dict) -> float:
    """One figure per epoch to pick the best by: the mean of the task's metrics."""
    return float(np.mean(list(metrics.values())))


def _validator(cfg, run_dir: Path, data: FinetuneData, model, micro, device, autocast, history):
    """Rank 0's evaluation of the dev split(s) at the end of an epoch. It records the
    epoch in `history` and, with trainer.select=best, keeps the best epoch's weights."""
    per_epoch = cfg.trainer.eval_every

    def validate_epoch(stop: Stop) -> dict | None:
        predictions = {}
        for split in data.task.dev_splits:
            if stop():
                return None
            predictions[split] = predict(model, data.encoded[split], micro, device, autocast)
        metrics = dev_metrics(data.task, predictions, data)
        epoch = len(history) + 1
        best = max((task_score(m) for _, m in history), default=-math.inf)
        history.append((epoch, metrics))
        if cfg.trainer.select == "best" and task_score(metrics) > best:
            state = {"epoch": epoch, "model": model.state_dict()}
            checkpoint.save(state, run_dir / checkpoint.SUBDIR / BEST)
        log.info("epoch %d of %d (step %d)", epoch, cfg.trainer.epochs, epoch * per_epoch)
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
    if epoch != len(history):  # select=best, and an earlier epoch was better
        best = checkpoint.load(run.run_dir / checkpoint.SUBDIR / BEST)
        run.model.load_state_dict(best["model"])
    written = write_predictions(run, data)
    write_hparams(run.writer, to_dict(cfg), metrics, {"loss": progress.last["loss"]})
    run.writer.close()
    summary = {
        "command": "finetune",
        "task": cfg.task.name,
        "init": cfg.init,
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


def chosen_epoch(history: list, select: str) -> tuple[int, dict]:
    """The epoch the summary reports: the last, or the one with the best task score."""
    if select == "best":
        epoch, metrics = max(history, key=lambda item: task_score(item[1]))
    else:
        epoch, metrics = history[-1]
    return int(epoch), dict(metrics)


def write_predictions(run: Run, data: FinetuneData) -> dict[str, str]:
    """Each test split's predictions in GLUE's submission format, under predictions/."""
    folder = run.run_dir / PREDICTIONS
    written = {}
    micro = micro_batch_size(run.cfg.trainer.batch_size, 1, run.accum)
    for split, name in data.task.submissions.items():
        if split not in data.encoded:
            continue
        folder.mkdir(exist_ok=True)
        found = predict(run.model, data.encoded[split], micro, run.device, run.autocast)
        index = data.task.splits[split].index
        scores.write_submission(folder / name, index, found, data.task.label_names)
        written[split] = str(folder / name)
    return written


def done_line(summary: dict) -> str:
    shown = "  ".join(f"{name} {value:.4f}" for name, value in summary["metrics"].items())
    which = "best" if summary["metrics_epoch"] == "best" else "last"
    test = "; test predictions in " + ", ".join(summary["predictions"].values())
    return (
        f"done: {summary['task']}, {summary['epochs']} epochs ({summary['steps']} steps), dev "
        f"{shown} ({which} epoch, {summary['epoch']}), {summary['seq_per_s']:.1f} seq/s; "
        f"checkpoint {summary['checkpoint']}{test if summary['predictions'] else ''}"
    )
