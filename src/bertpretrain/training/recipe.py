"""Fine-tuning's recipe made concrete before a run starts: the epochs as steps, the warmup
as a number of steps, and what `optim.lr=null` and `data.max_len=null` pick. The run's
checkpoints record the concrete values, and a resume derives the same ones."""

from __future__ import annotations

import math
from dataclasses import replace

from bertpretrain.config import FinetuneConfig
from bertpretrain.errors import UserError
from bertpretrain.init_from import trained_max_len

# optim.lr=null, by the model's hidden size: BERT's 2e-5 from BERT-base's width up (its
# paper searched 2e-5 to 5e-5); 1e-4 between, as Turc et al. (2019) fine-tuned their small
# BERTs; 1e-3 up to tiny's 128, where 1e-4 is too slow (a prototype of WikiText's
# `number` task, docs/benchmarks.md: 81.8 dev accuracy after 3 epochs at 1e-4, 92.7 at 1e-3).
LEARNING_RATES = ((768, 2e-5), (256, 1e-4), (0, 1e-3))  # (hidden size from, lr)
MAX_LEN = 128  # BERT's fine-tuning length (data.max_len=null)


def with_max_len(cfg: FinetuneConfig) -> FinetuneConfig:
    """data.max_len=null made a length: BERT's 128, or the pretrained model's own max_len
    where that is shorter (its positions past it were never trained)."""
    if cfg.data.max_len is not None:
        return cfg
    trained = trained_max_len(cfg.init) if cfg.init else cfg.model.max_position
    limit = min(MAX_LEN, trained)
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
    lr = optim.lr or next(lr for wide, lr in LEARNING_RATES if cfg.model.hidden_size >= wide)
    return replace(
        cfg,
        trainer=replace(trainer, max_steps=steps, eval_every=per_epoch),
        optim=replace(optim, lr=lr, warmup_steps=warmup, warmup_fraction=0.0),
    )
