"""The last layer on the rows a loss reads (model/queries.py): the losses, the classifier's
logits and every gradient are those of the whole last layer, and the rows nobody reads
are not computed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_model import SMALL, random_batch, small_model

from bertpretrain.model.attention import pack
from bertpretrain.model.bert import BertConfig
from bertpretrain.model.classifier import BertForClassification
from bertpretrain.model.cross_entropy import cross_entropy_sum


def whole_layer_losses(model, batch):
    """Pretraining's losses from the whole last layer, as before it read only its rows."""
    tokens, valid_lens = batch["tokens"], batch["valid_lens"]
    x = model.bert.encode_packed(tokens, batch["segments"], pack(valid_lens, tokens.shape[1]))
    starts = torch.cumsum(valid_lens, 0) - valid_lens
    real = batch["pred_weights"] > 0
    rows = (starts[:, None] + batch["pred_positions"])[real]
    mlm = cross_entropy_sum(model.mlm_logits(x[rows]), batch["pred_labels"][real])
    nsp = F.cross_entropy(model.nsp(model.bert.pool(x[starts])), batch["nsp_labels"])
    return mlm / real.sum(), nsp


def gradients(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(got, expected):
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        scale = float(grad.abs().max()) or 1.0
        torch.testing.assert_close(got[name], grad, rtol=0, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_pretraining_losses_and_gradients_are_the_whole_layers(layers, checkpointing):
    model = small_model(num_layers=layers, dropout=0.0).train()  # train: dropout 0, exact
    model.bert.gradient_checkpointing = checkpointing
    batch = random_batch(model.config, batch=9, length=16, preds=4)
    mlm, nsp = model.losses(batch)
    got = gradients(model, mlm + nsp)
    whole_mlm, whole_nsp = whole_layer_losses(model, batch)
    expected = gradients(model, whole_mlm + whole_nsp)
    torch.testing.assert_close(torch.stack([mlm, nsp]), torch.stack([whole_mlm, whole_nsp]))
    assert_same_gradients(got, expected)


@pytest.mark.parametrize("labels", [1, 3])
def test_classifier_logits_and_gradients_are_the_whole_layers(labels):
    torch.manual_seed(0)
    model = BertForClassification(BertConfig(**SMALL, dropout=0.0), labels).train()
    batch = random_batch(model.config, batch=7, length=12, preds=1)
    tokens, segments, valid_lens = batch["tokens"], batch["segments"], batch["valid_lens"]
    logits = model(tokens, segments, valid_lens)
    got = gradients(model, logits.square().sum())
    encoded = model.bert(tokens, segments, valid_lens)  # (B, L, H): every row, every layer
    whole = model.classifier(model.bert.pool(encoded[:, 0])).squeeze(-1)
    expected = gradients(model, whole.square().sum())
    torch.testing.assert_close(logits, whole)
    assert_same_gradients(got, expected)


def rows_through_last_feed_forward(model, run) -> int:
    seen = []
    hook = model.bert.layer[-1].intermediate.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[0])
    )
    try:
        run()
    finally:
        hook.remove()
    return seen[0]


def test_the_last_layer_computes_only_the_rows_the_losses_read():
    model = small_model().train()
    batch = random_batch(model.config, batch=16, length=32, preds=3)
    rows = rows_through_last_feed_forward(model, lambda: model.losses(batch))
    read = int((batch["pred_weights"] > 0).sum()) + 16  # the masked positions and each <cls>
    assert read <= rows <= read * 33 // 32 + 8  # rounded up to a step shape, no further
    assert rows < int(batch["valid_lens"].sum()) // 2


def test_the_classifier_computes_the_last_layer_at_cls_alone():
    torch.manual_seed(0)
    model = BertForClassification(BertConfig(**SMALL), 2).train()
    batch = random_batch(model.config, batch=16, length=32, preds=1)
    args = batch["tokens"], batch["segments"], batch["valid_lens"]
    assert rows_through_last_feed_forward(model, lambda: model(*args)) == 16


def test_with_dropout_the_read_rows_are_dropped_and_rescaled():
    """Training mode with dropout: the losses move with the seed, and average out to the
    dropout-free figure (inverted dropout keeps the expectation of each activation)."""
    model = small_model(num_layers=1, dropout=0.1)
    batch = random_batch(model.config, batch=8, length=16, preds=4)
    with torch.no_grad():
        exact = model.eval().losses(batch)[1]
        model.train()
        draws = []
        for seed in range(3):
            torch.manual_seed(seed)
            draws.append(model.losses(batch)[1])
    assert len({float(d) for d in draws}) == 3
    assert all(abs(float(d) - float(exact)) < 0.2 for d in draws)


@pytest.mark.parametrize("kernel_dropout", [None, True, False])
def test_the_last_layer_drops_attention_as_the_other_layers_do(monkeypatch, kernel_dropout):
    """On a varlen kernel without dropout every layer's attention dropout is off (the log
    says so), the last layer's too; elsewhere it is the model's."""
    from bertpretrain.model import bert as bert_module
    from bertpretrain.model.attention import VarlenKernel

    seen = []
    attend = bert_module.query_attention

    def recording(*args):
        seen.append(args[-1])
        return attend(*args)

    monkeypatch.setattr(bert_module, "query_attention", recording)
    if kernel_dropout is not None:  # a one-layer model: only the last layer's path runs
        kernel = VarlenKernel("a kernel", None, dropout=kernel_dropout)
        monkeypatch.setattr(bert_module, "varlen_kernel", lambda *args: kernel)
    model = small_model(num_layers=1, dropout=0.1).train()
    model.losses(random_batch(model.config, batch=4, length=12, preds=2))
    assert seen == [0.0 if kernel_dropout is False else 0.1]
