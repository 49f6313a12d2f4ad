"""BERT model: shapes, parameter counts, tied decoder, padding, losses, init and dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bertpretrain.config_compose import compose
from bertpretrain.model.bert import BertConfig, BertForPretraining, count_parameters

BERT_VOCAB = 30522  # the WordPiece vocabulary of the original BERT
SMALL = dict(vocab_size=97, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64)


def small_model(seed: int = 0, **overrides) -> BertForPretraining:
    torch.manual_seed(seed)
    return BertForPretraining(BertConfig(**{**SMALL, **overrides}))


def random_batch(
    c: BertConfig, batch: int, length: int, preds: int, seed: int = 1
) -> dict[str, torch.Tensor]:
    """A batch shaped like the data pipeline's: some rows padded, some prediction slots unused."""
    g = torch.Generator().manual_seed(seed)
    valid_lens = torch.randint(length // 2, length + 1, (batch,), generator=g)
    valid_lens[0] = length
    tokens = torch.randint(5, c.vocab_size, (batch, length), generator=g)
    segments = (torch.arange(length)[None, :] >= valid_lens[:, None] // 2).long()
    pred_positions = torch.randint(1, length // 2, (batch, preds), generator=g)
    pred_labels = torch.randint(5, c.vocab_size, (batch, preds), generator=g)
    n_real = torch.randint(1, preds + 1, (batch,), generator=g)
    pred_weights = (torch.arange(preds)[None, :] < n_real[:, None]).float()
    pred_positions = pred_positions * pred_weights.long()
    pred_labels = pred_labels * pred_weights.long()
    nsp_labels = torch.randint(0, 2, (batch,), generator=g)
    return {
        "tokens": tokens,
        "segments": segments,
        "valid_lens": valid_lens,
        "pred_positions": pred_positions,
        "pred_labels": pred_labels,
        "pred_weights": pred_weights,
        "nsp_labels": nsp_labels,
    }


def forward(model: BertForPretraining, batch: dict[str, torch.Tensor]):
    return model(batch["tokens"], batch["segments"], batch["valid_lens"], batch["pred_positions"])


def expected_parameters(c: BertConfig) -> int:
    """BERT's parameter count from its layer sizes (tied decoder counted once)."""
    h, f, v = c.hidden_size, c.ffn_size, c.vocab_size
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    layer_norm = 2 * h
    embeddings = (v + c.max_position + c.type_vocab_size) * h + layer_norm
    layer = (
        linear(h, 3 * h)  # query, key, value
        + linear(h, h)  # attention output
        + layer_norm
        + linear(h, f)  # intermediate
        + linear(f, h)  # output
        + layer_norm
    )
    pooler = linear(h, h)
    mlm_head = linear(h, h) + layer_norm + v  # transform + decoder bias; decoder weight tied
    nsp_head = linear(h, 2)
    return embeddings + c.num_layers * layer + pooler + mlm_head + nsp_head


def preset(name: str, vocab_size: int = BERT_VOCAB) -> BertConfig:
    return compose([f"model={name}"])[0].model.architecture(vocab_size)


def count_on_meta(c: BertConfig) -> int:
    """Parameters of the full model without allocating (or initialising) its weights."""
    with torch.device("meta"):
        return count_parameters(BertForPretraining(c))


# --- shapes and sizes -----------------------------------------------------------------


def test_forward_gives_encoded_mlm_and_nsp_logits_of_the_right_shapes():
    model = small_model().eval()
    c = model.config
    batch = random_batch(c, batch=3, length=11, preds=4)
    encoded, mlm, nsp = forward(model, batch)
    assert encoded.shape == (3, 11, c.hidden_size)
    assert mlm.shape == (3, 4, c.vocab_size)
    assert nsp.shape == (3, 2)
    mlm_loss, nsp_loss = model.losses(batch)
    assert mlm_loss.shape == nsp_loss.shape == ()


def test_bert_base_has_110m_parameters():
    c = preset("base")
    assert (c.num_layers, c.hidden_size, c.num_heads, c.ffn_size) == (12, 768, 12, 3072)
    count = count_on_meta(c)
    assert count == 110_106_428
    assert count == expected_parameters(c)
    assert abs(count - 110e6) < 0.01 * 110e6


def test_bert_large_has_about_340m_parameters():
    c = preset("large")
    assert (c.num_layers, c.hidden_size, c.num_heads, c.ffn_size) == (24, 1024, 16, 4096)
    count = count_on_meta(c)
    assert count == expected_parameters(c)  # 336,226,108: the paper rounds to 340M
    assert abs(count - 340e6) < 0.015 * 340e6


@pytest.mark.parametrize("vocab_size", [BERT_VOCAB, 4211])
def test_tiny_parameter_count_matches_its_layer_sizes(vocab_size):
    c = preset("tiny", vocab_size)
    assert (c.num_layers, c.hidden_size, c.num_heads, c.ffn_size) == (2, 128, 2, 256)
    model = BertForPretraining(c)  # small enough to build for real
    assert count_parameters(model) == expected_parameters(c)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


# --- tied decoder ---------------------------------------------------------------------


def test_mlm_decoder_is_the_word_embedding():
    model = small_model().eval()
    word = model.bert.embeddings.word_embeddings.weight
    # No second (V, H) matrix: the decoder has no weight of its own.
    big = [n for n, p in model.named_parameters() if p.shape == word.shape]
    assert big == ["bert.embeddings.word_embeddings.weight"]
    hidden = torch.randn(5, SMALL["hidden_size"])
    transformed = model.mlm_LayerNorm(F.gelu(model.mlm_dense(hidden)))
    torch.testing.assert_close(
        model.mlm_logits(hidden), transformed @ word.T + model.mlm_bias, rtol=1e-5, atol=1e-6
    )
    # Editing the embedding edits the decoder.
    with torch.no_grad():
        word[7] += 1.0
    torch.testing.assert_close(
        model.mlm_logits(hidden)[:, 7] - (transformed @ word.T)[:, 7],
        model.mlm_bias[7].expand(5),
    )


def test_mlm_loss_trains_the_word_embedding_of_the_labels():
    model = small_model().eval()
    c = model.config
    batch = random_batch(c, batch=2, length=9, preds=3)
    batch["tokens"].clamp_(max=50)  # input words 5..50 only
    batch["pred_labels"] = torch.where(batch["pred_weights"] > 0, 90, 0)  # a word never input
    mlm, _ = model.losses(batch)
    mlm.backward()
    grad = model.bert.embeddings.word_embeddings.weight.grad
    assert grad[90].abs().sum() > 0  # reached only through the tied decoder


# --- padding --------------------------------------------------------------------------


def test_padding_does_not_change_the_encoding_of_real_tokens():
    model = small_model().eval()
    c = model.config
    g = torch.Generator().manual_seed(3)
    n = 7
    tokens = torch.randint(5, c.vocab_size, (1, n), generator=g)
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    alone, _, _ = model(tokens, segments, torch.tensor([n]), torch.zeros(1, 1, dtype=torch.long))

    garbage = torch.randint(0, c.vocab_size, (1, 5), generator=g)
    padded_tokens = torch.cat([tokens, garbage], 1)
    padded_segments = torch.cat([segments, torch.tensor([[1, 0, 1, 1, 0]])], 1)
    padded, _, _ = model(
        padded_tokens, padded_segments, torch.tensor([n]), torch.zeros(1, 1, dtype=torch.long)
    )
    torch.testing.assert_close(padded[:, :n], alone, rtol=0, atol=1e-5)


def test_a_row_encodes_the_same_alone_and_in_a_padded_batch():
    model = small_model().eval()
    c = model.config
    batch = random_batch(c, batch=4, length=12, preds=2)
    encoded, mlm, nsp = forward(model, batch)
    for i in range(4):
        n = int(batch["valid_lens"][i])
        row = {k: v[i : i + 1] for k, v in batch.items()}
        alone, _, nsp_alone = model(
            row["tokens"][:, :n], row["segments"][:, :n], row["valid_lens"], row["pred_positions"]
        )
        torch.testing.assert_close(encoded[i : i + 1, :n], alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(nsp[i : i + 1], nsp_alone, rtol=0, atol=1e-5)


# --- losses ---------------------------------------------------------------------------


def test_mlm_loss_ignores_padded_prediction_slots():
    model = small_model().eval()
    c = model.config
    batch = random_batch(c, batch=4, length=10, preds=5)
    pad = batch["pred_weights"] == 0
    assert pad.any()
    mlm, nsp = model.losses(batch)

    changed = {k: v.clone() for k, v in batch.items()}
    changed["pred_labels"][pad] = c.vocab_size - 1
    changed["pred_positions"][pad] = 9
    mlm2, nsp2 = model.losses(changed)
    assert torch.equal(mlm, mlm2)
    assert torch.equal(nsp, nsp2)

    # ...whereas a real slot does count.
    real = (~pad).nonzero()[0]
    changed["pred_labels"][real[0], real[1]] = c.vocab_size - 2
    assert not torch.equal(model.losses(changed)[0], mlm)


def test_losses_are_cross_entropy_averaged_over_real_predictions():
    model = small_model().eval()
    c = model.config
    batch = random_batch(c, batch=4, length=10, preds=5)
    with torch.no_grad():
        _, mlm_logits, nsp_logits = forward(model, batch)
        mlm, nsp = model.losses(batch)

    total, count = 0.0, 0
    for i in range(4):
        for j in range(5):
            if batch["pred_weights"][i, j] > 0:
                log_p = torch.log_softmax(mlm_logits[i, j].double(), -1)
                total -= log_p[batch["pred_labels"][i, j]].item()
                count += 1
    assert count == int(batch["pred_weights"].sum())
    assert mlm.item() == pytest.approx(total / count, rel=1e-5)

    nsp_total = 0.0
    for i in range(4):
        log_p = torch.log_softmax(nsp_logits[i].double(), -1)
        nsp_total -= log_p[batch["nsp_labels"][i]].item()
    assert nsp.item() == pytest.approx(nsp_total / 4, rel=1e-5)


def test_untrained_model_on_real_batch_scores_chance_losses(valid_batch):
    batch, vocab_size = valid_batch
    torch.manual_seed(0)
    model = BertForPretraining(preset("tiny", vocab_size)).eval()
    with torch.no_grad():
        mlm, nsp = model.losses(batch)
    # N(0, 0.02) weights give near-uniform predictions: log V and log 2.
    assert mlm.item() == pytest.approx(math.log(vocab_size), abs=0.3)
    assert nsp.item() == pytest.approx(math.log(2), abs=0.1)


# --- initialisation and dropout -------------------------------------------------------


def test_weights_start_from_n_0_002_biases_zero_layer_norms_one():
    model = small_model(vocab_size=2000, hidden_size=256, num_heads=4, ffn_size=512)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert len(weights) == 3 + 2 * 4 + 1 + 1 + 1  # embeddings, layers, pooler, mlm, nsp
    for w in weights:
        assert w.std().item() == pytest.approx(0.02, rel=0.1), w.shape
        assert abs(w.mean().item()) < 0.005, w.shape
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.count_nonzero(m.bias) == 0
    assert torch.count_nonzero(model.mlm_bias) == 0


def test_eval_mode_is_deterministic():
    model = small_model(dropout=0.1).eval()
    batch = random_batch(model.config, batch=3, length=10, preds=3)
    first = forward(model, batch)
    second = forward(model, batch)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(model.losses(batch)[0], model.losses(batch)[0])


def test_dropout_makes_train_mode_stochastic():
    model = small_model(dropout=0.1).train()
    batch = random_batch(model.config, batch=3, length=10, preds=3)
    torch.manual_seed(0)
    first, _, _ = forward(model, batch)
    second, _, _ = forward(model, batch)
    assert not torch.allclose(first, second)
    # Same seed, same dropout masks.
    torch.manual_seed(0)
    again, _, _ = forward(model, batch)
    assert torch.equal(first, again)


def test_train_mode_without_dropout_equals_eval_mode():
    model = small_model(dropout=0.0)
    batch = random_batch(model.config, batch=3, length=10, preds=3)
    train_out = forward(model.train(), batch)
    eval_out = forward(model.eval(), batch)
    for x, y in zip(train_out, eval_out, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
