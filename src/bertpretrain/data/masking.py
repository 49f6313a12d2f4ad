"""Masked-LM corruption, vectorised in torch over a whole set of examples or one batch.

The same function serves both recipes: `static` masks (the reference's, BERT's) are drawn
once when the examples are built; `dynamic` masks (RoBERTa's) are drawn again on every
batch from the original tokens, so an example is masked differently each time it is used.
"""

from __future__ import annotations

import torch

from bertpretrain.data.vocab import MASK_ID, RESERVED

MASK_RATE = 0.15


def candidates(segments: torch.Tensor, valid_lens: torch.Tensor) -> torch.Tensor:
    """(B, L) True at word positions: not <cls>, not a <sep>, not padding.

    Found by position, not by id, because a corpus may contain the literal text "<sep>".
    """
    cols = torch.arange(segments.shape[1])
    valid = valid_lens[:, None]
    first_sep = ((segments == 0) & (cols < valid)).sum(1, keepdim=True) - 1
    return (cols >= 1) & (cols < valid - 1) & (cols != first_sep)


def mask_tokens(tokens, segments, valid_lens, vocab_size: int, max_preds: int, generator):
    """Corrupt max(1, round(0.15 * len)) word positions per row: 80% <mask>, 10% a random
    word, 10% unchanged. Returns new tokens and (B, max_preds) positions, labels, weights."""
    n = len(tokens)
    candidate = candidates(segments, valid_lens)
    n_pred = torch.minimum(torch.round(MASK_RATE * valid_lens).clamp(min=1), candidate.sum(1))
    keys = torch.rand(tokens.shape, generator=generator).masked_fill(~candidate, 2.0)
    chosen = keys.argsort(dim=1, stable=True)[:, :max_preds]
    real = torch.arange(max_preds) < n_pred[:, None]
    positions = torch.where(real, chosen, tokens.shape[1]).sort(dim=1).values  # real ones first
    positions = torch.where(real, positions, 0)
    labels = torch.where(real, tokens.gather(1, positions), 0)
    u = torch.rand((n, max_preds), generator=generator)
    random_words = torch.randint(len(RESERVED), vocab_size, (n, max_preds), generator=generator)
    corrupted = torch.where(u < 0.8, MASK_ID, torch.where(u < 0.9, random_words, labels))
    rows = torch.arange(n)[:, None].expand_as(real)
    out = tokens.clone()
    out[rows[real], positions[real]] = corrupted[real].to(out.dtype)
    return out, positions, labels, real.float()


def remask(batch: dict[str, torch.Tensor], vocab_size: int, generator) -> dict[str, torch.Tensor]:
    """Dynamic masking: restore the batch's original words, then draw fresh masks."""
    real = batch["pred_weights"] > 0
    rows = torch.arange(len(real))[:, None].expand_as(real)
    original = batch["tokens"].clone()
    original[rows[real], batch["pred_positions"][real]] = batch["pred_labels"][real]
    tokens, positions, labels, weights = mask_tokens(
        original,
        batch["segments"],
        batch["valid_lens"],
        vocab_size,
        real.shape[1],
        generator,
    )
    return batch | {
        "tokens": tokens,
        "pred_positions": positions,
        "pred_labels": labels,
        "pred_weights": weights,
    }
