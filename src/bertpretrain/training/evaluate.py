"""Validation: MLM and NSP loss and accuracy, and whether the encoder still tells tokens apart.

The token spread is what `encode` users rely on: near 0, every token of an input gets the
same vector and the vectors carry no context (a post-LN BERT trained too hard without
warmup ends there; docs/defaults.md). A run records its last validation in its
checkpoints, so `encode` can warn about a collapsed one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bertpretrain.data.batches import eval_batches
from bertpretrain.data.examples import Examples
from bertpretrain.model.bert import BertForPretraining


@torch.no_grad()
def evaluate(
    model: BertForPretraining,
    examples: Examples,
    batch_size: int,
    max_batches: int,
    device,
    autocast,
    stop: Callable[[], object] | None = None,
) -> dict | None:
    """MLM loss/accuracy over every real masked position, NSP loss/accuracy over examples,
    and the token spread: how much the encoder's vectors differ between the tokens of one
    input (the std over its real tokens, averaged over hidden units, then over inputs).
    Near 0, every token gets the same vector and encode's vectors carry no context.

    Returns None, early, once `stop()` is true (checked between batches): a signal must
    not wait for a long validation."""
    model.eval()
    # mlm loss, mlm correct, mlm count, nsp loss, nsp correct, token spread
    sums = torch.zeros(6, dtype=torch.float64)
    n = 0
    for batch in eval_batches(examples, batch_size, max_batches):
        if stop is not None and stop():
            model.train()
            return None
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast():
            encoded, mlm_logits, nsp_logits = model(
                batch["tokens"], batch["segments"], batch["valid_lens"], batch["pred_positions"]
            )
        real = batch["pred_weights"] > 0
        logits, labels = mlm_logits[real].float(), batch["pred_labels"][real]
        nsp_logits = nsp_logits.float()
        sums += (
            torch.stack(
                [
                    torch.nn.functional.cross_entropy(logits, labels, reduction="sum"),
                    (logits.argmax(-1) == labels).sum(),
                    real.sum(),
                    torch.nn.functional.cross_entropy(
                        nsp_logits, batch["nsp_labels"], reduction="sum"
                    ),
                    (nsp_logits.argmax(-1) == batch["nsp_labels"]).sum(),
                    token_spread(encoded.float(), batch["valid_lens"]).sum(),
                ]
            )
            .double()
            .cpu()
        )
        n += len(batch["nsp_labels"])
    model.train()
    mlm_loss, mlm_correct, mlm_count, nsp_loss, nsp_correct, spread = sums.tolist()
    return {
        "mlm_loss": mlm_loss / mlm_count,
        "mlm_acc": mlm_correct / mlm_count,
        "nsp_loss": nsp_loss / n,
        "nsp_acc": nsp_correct / n,
        "token_spread": spread / n,
    }


def token_spread(encoded: torch.Tensor, valid_lens: torch.Tensor) -> torch.Tensor:
    """(B,): per input, the std of its real tokens' vectors, averaged over hidden units."""
    real = (torch.arange(encoded.shape[1], device=encoded.device) < valid_lens[:, None])[..., None]
    count = valid_lens[:, None].to(encoded.dtype)  # (B, 1)
    mean = (encoded * real).sum(1) / count  # (B, H)
    var = (((encoded - mean[:, None]) * real) ** 2).sum(1) / count
    return var.sqrt().mean(1)


COLLAPSED = 0.01  # token spread below which encode's vectors say little about the context
