"""Transformers' side of benchmarks/finetune.py: BertForSequenceClassification (SDPA
attention, fp32) from the exported pretrained run, fine-tuned in this process with the
recipe our run recorded, as a transformers user writes the loop.

Same inputs as ours: our tokenizer and `encode_split` give the ids, `ClassificationStream`
with the seed gives the same batches in the same order. Each batch is padded to its
longest example (ours pads to a multiple of 16 and then packs the real tokens away), with
the attention mask and token_type_ids a transformers user passes.

The recipe, from our checkpoint's config: AdamW (weight decay on the matrices only: not
on biases and LayerNorm, as in BERT; fused, as ours and as transformers' Trainer defaults
to from torch 2.8, so the update kernel is not what is compared), transformers' linear warmup-then-decay schedule over our warmup and total
steps, gradient clipping, dev metrics by `bertpretrain.scores.compute` after each epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bertpretrain import scores
from bertpretrain.config import TaskConfig
from bertpretrain.data.classification import (
    ClassificationStream,
    Encoded,
    encode_split,
    eval_batches,
)
from bertpretrain.data.glue import read_task
from bertpretrain.data.task_splits import CLASSIFICATION
from bertpretrain.data.vocab import PAD_ID
from bertpretrain.load import load_model


def fine_tune(
    exported: Path, run: Path, task: str, folder: Path, recipe: dict, seed: int, pad: bool = False
):
    """Dev metrics of the last epoch, every epoch's, and each epoch's seconds of training
    steps (evaluation excluded). `pad`: every batch padded to max_len, as transformers'
    run_glue.py does by default (`pad_to_max_length`), instead of to its longest example."""
    import transformers

    transformers.logging.set_verbosity_error()  # "newly initialized classifier": expected
    transformers.utils.logging.disable_progress_bar()  # a bar per run drowns the rows
    config = TaskConfig(
        name=task, dir=str(folder), kind=CLASSIFICATION, text_a=None, text_b=None, label=None
    )
    data = read_task(config)
    tokenizer = load_model(run).tokenizer  # the same ids as `finetune init=RUN` uses
    max_len, batch = recipe["data"]["max_len"], recipe["trainer"]["batch_size"]
    train = encode_split(data.splits["train"], tokenizer, max_len)
    dev = encode_split(data.splits["dev"], tokenizer, max_len)
    torch.manual_seed(seed)  # the new head's initial weights and the dropout masks
    model = transformers.BertForSequenceClassification.from_pretrained(
        exported,
        num_labels=len(data.label_names),
        attn_implementation="sdpa",
        dtype=torch.float32,
    )
    optimizer, scheduler = optimizer_for(model, recipe)
    stream = ClassificationStream(train, batch, seed)
    per_epoch, epochs = stream.steps_per_epoch, recipe["trainer"]["epochs"]
    if epochs * per_epoch != recipe["trainer"]["max_steps"]:
        raise RuntimeError(f"{epochs} x {per_epoch} steps differs from our run's max_steps")
    seconds, history = [], []
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            ours = stream.batch(step)
            given = inputs(ours, max_len if pad else None)
            train_step(model, optimizer, given, ours["labels"], recipe["optim"]["grad_clip"])
            scheduler.step()
        seconds.append(time.perf_counter() - t0)
        history.append(evaluate(model, dev, batch, data.metrics))
    return {"metrics": history[-1], "history": history, "epoch_seconds": seconds}


def optimizer_for(model: torch.nn.Module, recipe: dict):
    """AdamW and the linear schedule with our run's settings."""
    import transformers

    optim = recipe["optim"]
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [  # matrices decay; biases and LayerNorm (the 1-d parameters) do not
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": optim["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"], fused=True
    )
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, optim["warmup_steps"], recipe["trainer"]["max_steps"]
    )
    return optimizer, scheduler


def inputs(batch: dict, width: int | None = None) -> dict:
    """Our batch as transformers takes it, cut to its longest example, or padded to
    `width` with the pad id (0 in the mask)."""
    width = width or int(batch["valid_lens"].max())
    keep = torch.arange(width) < batch["valid_lens"][:, None]  # (B, W)

    def fit(x: torch.Tensor) -> torch.Tensor:
        x = x[:, :width]
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=PAD_ID)

    return {
        "input_ids": fit(batch["tokens"]),
        "token_type_ids": fit(batch["segments"]) * keep,
        "attention_mask": keep.long(),
    }


def train_step(model, optimizer, batch: dict, labels, grad_clip: float) -> None:
    loss = model(**batch, labels=labels).loss  # the batch's mean
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


@torch.no_grad()
def evaluate(model, dev: Encoded, batch: int, metrics: tuple[str, ...]) -> dict:
    model.eval()
    found = [model(**inputs(b)).logits.argmax(-1) for b in eval_batches(dev, batch)]
    return scores.compute(metrics, torch.cat(found).numpy(), dev.labels)
