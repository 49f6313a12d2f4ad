"""An endless stream of shuffled batches, each a pure function of (seed, step).

Batch k holds items [k*B, (k+1)*B) of the concatenation of per-epoch permutations, so a
resumed run sees exactly the batches the uninterrupted run would have seen, and a corpus
smaller than one batch still works. The examples are made and masked when their batch is
asked for (data/examples.py), by each rank for its own share only, in the training
process or in DataLoader workers: the result is the same either way.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from bertpretrain.data.examples import Batch, Examples


class BatchStream:
    def __init__(self, examples: Examples, batch_size: int, seed: int, dynamic: bool = False):
        self.examples = examples
        self.n = len(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.dynamic = dynamic  # new masks each epoch (RoBERTa's), else the same ones
        self._perm = lru_cache(maxsize=2)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 2, epoch]).permutation(self.n)

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The examples of global batch `step` and the epoch each is drawn in."""
        start, stop = step * self.batch_size, (step + 1) * self.batch_size
        parts, epochs = [], []
        for epoch in range(start // self.n, (stop - 1) // self.n + 1):
            lo = max(start - epoch * self.n, 0)
            hi = min(stop - epoch * self.n, self.n)
            parts.append(self._perm(epoch)[lo:hi])
            epochs.append(np.full(hi - lo, epoch))
        return np.concatenate(parts), np.concatenate(epochs)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """Rank `rank`'s share of global batch `step`: its 1/world contiguous slice."""
        indices, epochs = self.indices(step)
        share = self.batch_size // world
        indices = indices[rank * share : (rank + 1) * share]
        epochs = epochs[rank * share : (rank + 1) * share]
        return self.examples.batch(indices, epochs if self.dynamic else 0)


class StepBatches(torch.utils.data.Dataset):
    """A DataLoader's view of the stream: item `step` is this rank's batch of that step, so
    workers build batches ahead of the loop and a resume just starts at another step."""

    def __init__(self, stream: BatchStream, rank: int = 0, world: int = 1):
        self.stream, self.rank, self.world = stream, rank, world

    def __getitem__(self, step: int) -> Batch:
        return self.stream.batch(step, self.rank, self.world)


def batch_loader(
    stream: BatchStream, steps: range, rank: int, world: int, workers: int, pin: bool
) -> torch.utils.data.DataLoader:
    """This rank's batches of `steps`, in order, built by `workers` background processes
    (0: in the training process)."""
    return torch.utils.data.DataLoader(
        StepBatches(stream, rank, world),
        batch_size=None,  # an item is already a batch
        sampler=steps,
        num_workers=workers,
        pin_memory=pin,
        # its own generator: a DataLoader otherwise draws its workers' base seed from the
        # global RNG, shifting the dropout masks of a resumed run by one draw
        generator=torch.Generator().manual_seed(0),
    )


def eval_batches(examples: Examples, batch_size: int, max_batches: int):
    """The validation split in order, in batches (all of them when max_batches is 0), with
    the masks of epoch 0: every validation sees the same ones."""
    count = -(-len(examples) // batch_size)
    if max_batches:
        count = min(count, max_batches)
    for i in range(count):
        yield examples.batch(np.arange(i * batch_size, min((i + 1) * batch_size, len(examples))))
