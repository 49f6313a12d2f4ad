"""An endless stream of shuffled batches that is a pure function of (seed, step).

Batch k holds items [k*B, (k+1)*B) of the concatenation of per-epoch permutations, so a
resumed run sees exactly the batches the uninterrupted run would have seen, and a
corpus smaller than one batch still works.
"""

from __future__ import annotations

from dataclasses import fields
from functools import lru_cache

import numpy as np
import torch

from bertpretrain.data.examples import Examples

Batch = dict[str, torch.Tensor]


def to_tensors(examples: Examples) -> Batch:
    """All examples as torch tensors in the dtypes the model wants (done once, not per step)."""
    out = {}
    for f in fields(Examples):
        array = getattr(examples, f.name)
        dtype = torch.float32 if array.dtype.kind == "f" else torch.long
        out[f.name] = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    return out


class BatchStream:
    def __init__(self, data: Batch, batch_size: int, seed: int):
        self.data = data
        self.n = len(data["nsp_labels"])
        self.batch_size = batch_size
        self.seed = seed
        self._perm = lru_cache(maxsize=2)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 2, epoch]).permutation(self.n)

    def indices(self, step: int) -> np.ndarray:
        start, stop = step * self.batch_size, (step + 1) * self.batch_size
        parts = []
        for epoch in range(start // self.n, (stop - 1) // self.n + 1):
            lo = max(start - epoch * self.n, 0)
            hi = min(stop - epoch * self.n, self.n)
            parts.append(self._perm(epoch)[lo:hi])
        return np.concatenate(parts)

    def batch(self, step: int) -> Batch:
        idx = torch.from_numpy(self.indices(step))
        return {k: v.index_select(0, idx) for k, v in self.data.items()}


def eval_batches(data: Batch, batch_size: int, max_batches: int):
    """The validation split in order, in batches (all of them when max_batches is 0)."""
    n = len(data["nsp_labels"])
    count = -(-n // batch_size)
    if max_batches:
        count = min(count, max_batches)
    for i in range(count):
        yield {k: v[i * batch_size : (i + 1) * batch_size] for k, v in data.items()}
