"""Fine-tuning's recipe made concrete before a run starts: the epochs as steps, the warmup
as a number of steps, and what `optim.lr=null` and `data.max_len=null` pick. The run's
checkpoints record the concrete values, and a resume derives the same ones."""

from __future__ import annotations

import math
from dataclasses import replace

from bertpretrain.config import FinetuneConfig
from bertpretrain.errors import UserError
from bertpretrain.init_from import trained_max_len

# optim.lr=null: BERT's 2e-5 from BERT-base's width up (its paper searched 2e-5 to 5e-5);
# narrower models such as tiny (hidden 128) learn too slowly there and take 1e-4.
BERT_LR, NARROW_LR, NARROW_BELOW = 2e-5, 1e-4, 768
MAX_LEN = 128  # BERT's fine-tuning length (data.max_len=null)


def with_max_len(cfg: FinetuneConfig) -> FinetuneConfig:
    """data.max_len=null made a length: BERT's 128, or the pretrained model's own max_len
    where that is shorter (its positions past it were never trained)."""
    if cfg.data.max_len is not None:
        return cfg
    limit = min(MAX_LEN, trained_max_len(cfg.init)) if cfg.init else MAX_LEN
    return replace(cfg, data=replace(cfg.data, max_len=limit))


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
