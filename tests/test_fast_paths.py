"""The speed-ups compute what a plain BERT computes.

The plain reference below is the padded, textbook computation (every position through
every layer, SDPA with a padding mask, the MLM head on a gathered (B, P, H) block, the
loss weighted by pred_weights). With dropout off it must give the same losses as the
packed path the trainer uses, to float32 rounding (atol 1e-5). The cheap dropout mask
draws different random numbers, so it is checked for its keep probability instead.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertpretrain.model.attention import dropout
from bertpretrain.model.bert import BertConfig, BertForPretraining


def plain_losses(model: BertForPretraining, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    bert, c = model.bert, model.config
    tokens, segments, valid_lens = batch["tokens"], batch["segments"], batch["valid_lens"]
    b, n = tokens.shape
    e = bert.embeddings
    x = (
        e.word_embeddings(tokens)
        + e.position_embeddings(torch.arange(n))
        + e.token_type_embeddings(segments)
    )
    x = e.LayerNorm(x)
    keep = (torch.arange(n) < valid_lens[:, None])[:, None, None, :]
    d = c.hidden_size // c.num_heads
    for layer in bert.layer:
        q, k, v = layer.qkv(x).split(c.hidden_size, dim=-1)
        q, k, v = (t.view(b, n, c.num_heads, d).transpose(1, 2) for t in (q, k, v))
        a = (
            F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            .transpose(1, 2)
            .reshape(b, n, -1)
        )
        x = layer.attention_LayerNorm(x + layer.attention_output(a))
        x = layer.output_LayerNorm(x + layer.output(F.gelu(layer.intermediate(x))))
    picked = x.gather(1, batch["pred_positions"][..., None].expand(-1, -1, c.hidden_size))
    logits = model.mlm_logits(picked)  # (B, P, V)
    w = batch["pred_weights"]
    ce = F.cross_entropy(logits.flatten(0, 1), batch["pred_labels"].flatten(), reduction="none")
    mlm = (ce * w.flatten()).sum() / w.sum()
    nsp = F.cross_entropy(model.nsp(torch.tanh(bert.pooler(x[:, 0]))), batch["nsp_labels"])
    return mlm, nsp


def test_packed_losses_equal_the_plain_padded_computation(valid_batch):
    batch, vocab = valid_batch
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(vocab, 2, 128, 2, 256, dropout=0.0)).train()
    mlm, nsp = model.losses(batch)
    ref_mlm, ref_nsp = plain_losses(model, batch)
    torch.testing.assert_close(mlm, ref_mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp, ref_nsp, atol=1e-5, rtol=1e-5)


def test_packed_gradients_equal_the_plain_padded_computation(valid_batch):
    batch, vocab = valid_batch
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(vocab, 2, 128, 2, 256, dropout=0.0)).train()
    sum(model.losses(batch)).backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sum(plain_losses(model, batch)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_forward_api_matches_the_training_path(valid_batch):
    """`forward` (used by encode and validation) scatters the packed result back to (B, L, H)."""
    batch, vocab = valid_batch
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(vocab, 2, 128, 2, 256, dropout=0.0)).eval()
    _, mlm_logits, nsp_logits = model(
        batch["tokens"], batch["segments"], batch["valid_lens"], batch["pred_positions"]
    )
    real = batch["pred_weights"] > 0
    mlm = F.cross_entropy(mlm_logits[real], batch["pred_labels"][real])
    ref_mlm, ref_nsp = plain_losses(model, batch)
    torch.testing.assert_close(mlm, ref_mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.cross_entropy(nsp_logits, batch["nsp_labels"]), ref_nsp)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_cheap_dropout_keeps_the_keep_probability_and_is_unbiased(p):
    torch.manual_seed(0)
    x = torch.ones(4_000_000)
    y = dropout(x, p, training=True)
    kept = (y != 0).double().mean().item()
    std = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(kept - (1 - p)) < 5 * std + 1 / 65536  # quantised to 1/65536 at most
    assert abs(y.double().mean().item() - 1.0) < 5 * std / (1 - p) + 1e-4
    assert set(y.unique().tolist()) <= {0.0, y.max().item()}


def test_cheap_dropout_masks_are_fresh_and_follow_the_seed():
    x = torch.ones(10_000)
    torch.manual_seed(1)
    a, b = dropout(x, 0.2, True), dropout(x, 0.2, True)
    torch.manual_seed(1)
    assert not torch.equal(a, b)
    assert torch.equal(a, dropout(x, 0.2, True))


def test_dropout_is_identity_in_eval_mode():
    x = torch.randn(100)
    assert dropout(x, 0.2, training=False) is x
