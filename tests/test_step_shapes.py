"""A training step's tensors come in a few shapes: the packed tokens and the MLM rows are
rounded up (`attention.rounded_rows`), so the allocator reuses its blocks instead of
fragmenting on a new size every step, and the rounding changes no loss, gradient or
dropout mask."""

from __future__ import annotations

import pytest
import torch
from conftest import build_wikitext
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model import SMALL, random_batch, small_model

from bertpretrain.data.batches import BatchStream
from bertpretrain.model import bert as bert_module
from bertpretrain.model.attention import pack, rounded_rows
from bertpretrain.model.bert import BertConfig


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 10**8), st.integers(0, 10**8))
def test_rounded_rows_add_under_a_32nd_and_never_pass_the_batch(count, room):
    most = count + room
    rows = rounded_rows(count, most)
    assert count <= rows <= most
    assert rows - count < max(8, count / 32)


def test_a_runs_batches_take_a_few_shapes_where_their_token_counts_all_differ(wikitext_dir):
    data = build_wikitext(wikitext_dir / "wiki.valid.tokens", None)
    stream = BatchStream(data.train, batch_size=512, seed=0)
    real, rounded = set(), set()
    for step in range(24):
        batch = stream.batch(step)
        packing = pack(batch["valid_lens"], batch["tokens"].shape[1], round_rows=True)
        real.add(packing.real)
        rounded.add(len(packing.index))
        predictions = int((batch["pred_weights"] > 0).sum())
        rounded.add(rounded_rows(predictions, batch["pred_weights"].numel()))
    assert len(real) >= 20  # without rounding, nearly every step a new size
    assert len(rounded) <= 6  # packed tokens and MLM rows together: a handful


def test_padding_rows_are_real_padding_positions_after_the_real_tokens():
    valid_lens, length = torch.tensor([5, 1, 7, 3]), 7
    packing = pack(valid_lens, length, round_rows=True)
    exact = pack(valid_lens, length)
    assert packing.real == 16 and len(packing.index) == rounded_rows(16, 28) == 16
    longer = torch.tensor([60, 3, 41, 64, 9])
    packing, exact = pack(longer, 64, round_rows=True), pack(longer, 64)
    rows = len(packing.index)
    assert rows > packing.real == len(exact.index)
    assert torch.equal(packing.index[: packing.real], exact.index)
    extra = packing.index[packing.real :]
    assert len(set(extra.tolist())) == len(extra)  # distinct positions
    assert not packing.keep.flatten()[extra].any()  # all of them padding: keys to nothing
    # the padding rows are sequences of their own, none longer than L (the varlen kernels')
    cu = packing.cu_lens.tolist()
    assert cu[: len(exact.cu_lens)] == exact.cu_lens.tolist() and cu[-1] == rows
    assert all(
        0 < b - a <= 64 for a, b in zip(cu[len(exact.cu_lens) - 1 :], cu[len(exact.cu_lens) :])
    )


def losses_and_gradients(batch: dict, seed: int = 3):
    bert = small_model(dropout=0.1).train()
    torch.manual_seed(seed)  # the same dropout masks, drawn from here
    mlm, nsp = bert.losses(batch)
    (mlm + nsp).backward()
    grads = {name: p.grad.clone() for name, p in bert.named_parameters()}
    return torch.stack([mlm, nsp]), grads, torch.randint(0, 2**31, (4,))


@pytest.mark.parametrize("length", [12, 64])
def test_rounding_changes_no_loss_gradient_or_dropout_draw(monkeypatch, length):
    batch = random_batch(BertConfig(**SMALL), batch=37, length=length, preds=9)
    losses, grads, after = losses_and_gradients(batch)
    monkeypatch.setattr(bert_module, "rounded_rows", lambda count, most: count)
    monkeypatch.setattr(
        bert_module, "pack", lambda valid_lens, length, round_rows: pack(valid_lens, length)
    )
    exact_losses, exact_grads, exact_after = losses_and_gradients(batch)
    # the same random stream afterwards: the padding rows drew no dropout mask
    assert torch.equal(after, exact_after)
    torch.testing.assert_close(losses, exact_losses, rtol=1e-6, atol=0)
    for name, grad in exact_grads.items():
        scale = float(grad.abs().max()) or 1.0
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-5 * scale, msg=name)


def test_the_batch_mean_is_that_of_the_real_rows_alone():
    bert = small_model().eval()
    batch = random_batch(bert.config, batch=21, length=16, preds=4)
    mlm, _ = bert.losses(batch)
    encoded, logits, _ = bert(
        batch["tokens"], batch["segments"], batch["valid_lens"], batch["pred_positions"]
    )
    real = batch["pred_weights"] > 0
    expected = torch.nn.functional.cross_entropy(logits[real], batch["pred_labels"][real])
    torch.testing.assert_close(mlm, expected, rtol=1e-5, atol=1e-6)
