"""What a run optimises and how it is judged: pretraining's MLM and NSP losses, or a
downstream task's loss and metrics.

The loop (loop.py) is the same for every objective. It asks the objective for each
step's batch, for the losses' denominators, for a validation, and for what a checkpoint
records beside the weights and the optimizer's state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bertpretrain.data.batches import BatchStream
from bertpretrain.data.pipeline import Dataset
from bertpretrain.training.evaluate import evaluate

Stop = Callable[[], object]  # true once a signal asks the run to stop


@dataclass(frozen=True)
class Objective:
    losses: tuple[str, ...]  # the names of what a step's module gives, in that order
    stream: Any  # batch(step, rank, world): every step's batch, a function of the step
    counts: Callable[[dict], list[int]]  # a batch's share of each loss's denominator
    # rank 0's validation after step N: validate(stop, N); None: no validation split
    validate: Callable[[Stop, int], dict | None] | None
    record: dict  # what every checkpoint records beside the weights and states
    # whether saves point outputs/latest at the run: pretraining's do, for `encode` and for
    # `finetune init=outputs/latest`, which fine-tuning runs must not redirect mid-sweep
    latest: bool = True


def pretraining(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    dynamic_masking: bool,
    model: torch.nn.Module,
    eval_batch: tuple[int, int],
    device: torch.device,
    autocast,
) -> Objective:
    """MLM and NSP on `dataset`; validation in batches of eval_batch[0], eval_batch[1] of
    them (the micro-batch the memory plan chose)."""

    def counts(batch: dict) -> list[int]:  # masked positions and examples
        return [int((batch["pred_weights"] > 0).sum()), len(batch["nsp_labels"])]

    def validate(stop: Stop, step: int) -> dict | None:
        size, batches = eval_batch
        return evaluate(model, dataset.valid, size, batches, device, autocast, stop)

    return Objective(
        losses=("mlm_loss", "nsp_loss"),
        stream=BatchStream(dataset.train, batch_size, seed, dynamic_masking),
        counts=counts,
        validate=validate if dataset.valid is not None else None,
        record={
            "vocab": dataset.vocab,
            "tokenizer": dataset.tokenizer.settings(),
            "corpus_digest": dataset.corpus_digest,
        },
    )
