"""The last layer on the rows a loss reads.

Pretraining's losses read the last layer's output at the masked positions and at each
`<cls>`; a classifier's only at `<cls>`. The other rows of the last layer feed nothing, so
there it computes keys and values for every token (each read row still attends to its
whole sequence) but its queries, attention output, LayerNorms and feed-forward block only
for the rows read. Exact: those rows get what the whole layer gives them, up to float
rounding. For tiny BERT (two layers, the reference's model) that removes a third of the
encoder's matmuls in pretraining and three eighths in fine-tuning, where one row of about
fifty is read; for BERT-base, about a twelfth. MosaicBERT runs its last layer on the
masked tokens alone for the same reason.

The read rows are laid out as a (B, M) grid, row b holding sequence b's: attention then
runs on a padded batch of M queries a sequence, over keys and values scattered straight to
the (B, heads, L, d) layout the matmuls read.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from bertpretrain.model.attention import Packing, dropout, head_slots, rounded_rows, scatter_heads


class Queries(NamedTuple):
    """The rows the last layer computes, as a (B, M) grid of packed rows."""

    grid: torch.Tensor  # (B * M,) the packed row of each slot; row b's slots are sequence b's
    take: torch.Tensor | None  # the slots computed past attention, in the output's order; None: all
    real: int  # the first `real` of them are read; the rest round the count (rounded_rows)


def cls_queries(starts: torch.Tensor) -> Queries:
    """Each sequence's `<cls>` alone; `starts` (B,) are their packed rows."""
    return Queries(starts, None, len(starts))


def pretraining_queries(
    starts: torch.Tensor, positions: torch.Tensor, real: torch.Tensor
) -> tuple[Queries, int]:
    """The rows pretraining's losses read, and how many of them the MLM head takes: the
    real prediction slots of `positions` (B, P) (where `real`), in the batch's row-major
    order, then the B `<cls>`, then unread slots up to `rounded_rows` (so the last layer's
    tensors come in a few shapes, as the packed tokens do)."""
    b, p = positions.shape
    # (B, P + 1): <cls> last; an unused slot reads <cls> too, whatever position it holds
    slots = F.pad(torch.where(real, positions, 0), (0, 1))
    grid = (starts[:, None] + slots).flatten()
    flat = torch.arange(b * (p + 1), device=positions.device).view(b, p + 1)
    mlm = flat[:, :p][real]
    read = len(mlm) + b
    take = torch.cat([mlm, flat[:, p], flat[:, :p][~real]])[: rounded_rows(read, flat.numel())]
    return Queries(grid, take, read), len(mlm)


def rows_of(x: torch.Tensor, queries: Queries) -> torch.Tensor:
    """The rows `queries` name, in their order, of a whole layer's (rows, H) output."""
    x = x[queries.grid]
    return x if queries.take is None else x[queries.take]


def query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packing: Packing,
    num_heads: int,
    dropout_p: float,
) -> torch.Tensor:
    """(B * M, H) queries, M a sequence, attending to the real keys of their own sequence;
    `k` and `v` (rows, H) are the packed keys and values. Returns (B * M, H)."""
    b, length = packing.batch, packing.length
    width = q.shape[-1]
    d = width // num_heads
    m = len(q) // b
    index = head_slots(packing, num_heads)
    k, v = (
        scatter_heads(t, index, b * num_heads * length, d).view(b, num_heads, length, d)
        for t in (k, v)
    )
    q = q.view(b, m, num_heads, d).transpose(1, 2)  # (B, heads, M, d)
    if dropout_p and q.device.type == "cpu":  # SDPA would draw its mask the slow way
        scores = (q @ k.transpose(-1, -2)).mul_(d**-0.5)
        scores = scores.masked_fill_(~packing.keep, float("-inf"))
        a = dropout(torch.softmax(scores, -1), dropout_p, True) @ v
    else:
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.keep, dropout_p=dropout_p)
    return a.transpose(1, 2).reshape(b * m, width)
