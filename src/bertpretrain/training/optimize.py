"""One optimisation step: the optimizer and its schedule, micro-batches, gradient
accumulation across micro-batches and ranks, clipping, and the non-finite guard."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from bertpretrain import distributed
from bertpretrain.config import OptimConfig
from bertpretrain.model.bert import BertForPretraining


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam (the reference) or AdamW; weight decay skips biases and LayerNorm, as in BERT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
    kernel = update_kernel(params[0].device.type)
    return cls(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, **kernel)


def update_kernel(device_type: str) -> dict[str, bool]:
    """The fused kernel on CUDA (every parameter in one launch) and on the CPU, where
    `foreach` falls back to a loop of per-tensor ops: fused Adam took 0.4 ms against 1.2 ms
    for tiny and 48 ms against 260 ms for BERT-base (docs/benchmarks.md). transformers'
    Trainer defaults to it too (adamw_torch_fused, from torch 2.8). Elsewhere `foreach`."""
    return {"fused": True} if device_type in ("cuda", "cpu") else {"foreach": True}


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim, max_steps))


def lr_factor(optim: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Linear warmup, then constant or linear decay to zero at max_steps."""

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "linear":
            return max(0.0, (max_steps - step) / max(1, max_steps - optim.warmup_steps))
        return 1.0

    return factor


class PretrainingLosses(torch.nn.Module):
    """The model's losses as a forward(), because DistributedDataParallel syncs gradients
    only for what goes through the wrapped module's forward."""

    def __init__(self, model: BertForPretraining):
        super().__init__()
        self.model = model

    def forward(self, batch, mlm_count=None, nsp_count=None):
        return self.model.losses(batch, mlm_count, nsp_count)


def split_batch(batch: dict, accum: int) -> list[dict]:
    """A rank's share of the batch cut into `accum` equal micro-batches."""
    size = len(batch["tokens"]) // accum
    return [{k: v[m * size : (m + 1) * size] for k, v in batch.items()} for m in range(accum)]


def training_step(
    module,
    optimizer,
    micro_batches,
    autocast,
    grad_clip: float,
    counts=(),
    stopping: Callable[[], bool] = lambda: False,
):
    """Forward and backward every micro-batch, clip, update.

    `module(micro_batch, *counts)` gives a tuple of losses (pretraining's mlm and nsp, a
    task's one loss), and the step minimises their sum. Returns their values for this
    rank's share, stacked, and whether every loss was finite. A non-finite loss on any rank
    leaves the weights untouched on all of them; the caller decides whether to stop.
    `counts` are the global batch's denominators of the losses (pretraining: its masked
    positions and examples), so micro-batch losses add up to the global batch mean exactly.
    When `stopping()` turns true between micro-batches (a step of many can take minutes),
    the step is dropped with the weights untouched and the losses are None.
    """
    optimizer.zero_grad(set_to_none=True)
    device = micro_batches[0]["tokens"].device
    total = None
    # Each rank's loss is its share of the global mean, so the global gradient is the *sum*
    # of the ranks' gradients; DistributedDataParallel averages them instead. Scaling by
    # the world size undoes its division, so the update matches one process for any
    # optimizer (Adam's eps, clipping and weight decay all see the gradient's scale).
    world = distributed.ranks().world
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = (
            contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()
        )
        with sync:
            with autocast():
                losses = module(mb, *counts)
            loss = sum(losses)
            # one agreement per micro-batch, as every rank must take the same branch
            nonfinite, stop = distributed.any_rank_each(
                [not bool(torch.isfinite(loss)), not last and stopping()], device
            )
            if nonfinite or stop:
                optimizer.zero_grad(set_to_none=True)
                if stop and not nonfinite:
                    return None, False
                return torch.zeros(len(losses), device=device) if total is None else total, False
            (loss * world).backward()
        values = torch.stack([part.detach() for part in losses]).float()
        total = values if total is None else total + values
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    return total, True
