"""The CPU's training attention (model/cpu_attention.py) and the MLM loss
(model/cross_entropy.py) each write their backward by hand: both are held here to what
autograd computes from the plain formulas, dropout and ignored rows included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bertpretrain.model import cpu_attention as cpu_attention_module
from bertpretrain.model import cross_entropy
from bertpretrain.model.attention import dropout, pack
from bertpretrain.model.cpu_attention import cpu_attention
from bertpretrain.model.cross_entropy import IGNORED, cross_entropy_sum


def autograd_attention(qkv, packing, heads, p):
    """The padded path in plain ops, in cpu_attention's (heads, B) order of the scores so
    that both draw the same dropout mask from the same seed."""
    b, n, width = packing.batch, packing.length, qkv.shape[-1]
    d = width // 3 // heads
    padded = qkv.new_zeros(b * n, width).index_copy(0, packing.index, qkv)
    q, k, v = padded.view(b, n, 3, heads, d).permute(2, 3, 0, 1, 4).reshape(3, heads * b, n, d)
    scores = (q @ k.transpose(-1, -2)) * d**-0.5
    scores = scores.masked_fill(~packing.keep.view(b, 1, n).repeat(heads, 1, 1), float("-inf"))
    out = dropout(scores.softmax(-1), p, True) @ v
    packed = out.view(heads, b * n, d).index_select(1, packing.index)
    return packed.transpose(0, 1).reshape(-1, width // 3)


def run(attend, qkv, packing, heads, p, grad, seed=1):
    torch.manual_seed(seed)
    out = attend(qkv, packing, heads, p)
    (q_grad,) = torch.autograd.grad(out, qkv, grad)
    return out, q_grad


lengths_and_heads = {
    "lengths": st.lists(st.integers(1, 40), min_size=1, max_size=6),
    "heads": st.sampled_from([1, 2, 3]),
    "round_rows": st.booleans(),
    "seed": st.integers(0, 2**31),
}


def inputs(lengths, heads, round_rows, seed, extra=1):
    generator = torch.Generator().manual_seed(seed)
    packing = pack(torch.tensor(lengths), max(lengths) + extra, round_rows=round_rows)
    rows, width = len(packing.index), 3 * heads * 4
    qkv = torch.randn(rows, width, dtype=torch.float64, generator=generator).requires_grad_()
    grad = torch.randn(rows, width // 3, dtype=torch.float64, generator=generator)
    grad[packing.real :] = 0  # rows that round a step's shape feed nothing (model/attention.py)
    return packing, qkv, grad


@settings(max_examples=60, deadline=None)
@given(**lengths_and_heads, extra=st.integers(0, 40), chunk=st.sampled_from([None, 1, 2, 3]))
def test_attention_and_its_gradient_are_autograds(lengths, heads, round_rows, seed, extra, chunk):
    """Lengths spread over several buckets, each padded to its own rounded length and to a
    multiple of `chunk` sequences with empty ones (None: each bucket whole, as in fp32):
    every real row's output and every gradient are the padded batch's."""
    packing, qkv, grad = inputs(lengths, heads, round_rows, seed, extra)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_attention_module, "chunk", lambda batch, dtype: chunk)
        ours = run(cpu_attention, qkv, packing, heads, 0.0, grad)
    theirs = run(autograd_attention, qkv, packing, heads, 0.0, grad)
    real = packing.real
    torch.testing.assert_close(ours[0][:real], theirs[0][:real], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(**lengths_and_heads, p=st.sampled_from([0.1, 0.5]))
def test_the_gradient_under_dropout_is_the_outputs(lengths, heads, round_rows, seed, p):
    """With dropout, the gradient is that of the very output drawn (the same mask in
    forward and backward): checked against finite differences with the draws fixed."""
    lengths = lengths[:3]
    packing, qkv, _ = inputs(lengths, heads, round_rows, seed)

    def attend(x):
        torch.manual_seed(seed)
        return cpu_attention(x, packing, heads, p)[: packing.real]

    assert torch.autograd.gradcheck(attend, (qkv,), eps=1e-6, atol=1e-6)


def test_attention_dropout_drops_and_rescales():
    """With dropout the output differs from the dropout-free one and is unbiased: the mean
    over many draws approaches it."""
    packing = pack(torch.tensor([6, 4]), 6)
    qkv = torch.randn(len(packing.index), 12, dtype=torch.float64)
    clean = cpu_attention(qkv, packing, 2, 0.0)
    draws = torch.stack([cpu_attention(qkv, packing, 2, 0.3) for _ in range(4000)])
    assert not torch.equal(draws[0], clean)
    torch.testing.assert_close(draws.mean(0), clean, rtol=0, atol=0.05)


def test_bf16_attention_stays_bf16_and_near_fp32():
    packing = pack(torch.tensor([7, 3, 5]), 8)
    qkv = torch.randn(len(packing.index), 24)
    grad = torch.randn(len(packing.index), 8)
    full = run(cpu_attention, qkv.requires_grad_(), packing, 2, 0.2, grad)
    half_in = qkv.detach().bfloat16().requires_grad_()
    half = run(cpu_attention, half_in, packing, 2, 0.2, grad.bfloat16())
    for actual, expected in zip(half, full, strict=True):
        assert actual.dtype == torch.bfloat16
        torch.testing.assert_close(actual.float(), expected, rtol=0.05, atol=0.05)


def reference_loss(logits, labels):
    return F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=IGNORED)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    vocab=st.integers(2, 50),
    ignored=st.floats(0, 1),
    scale=st.sampled_from([1.0, 0.03, 0.0, -2.0, float("inf")]),
    chunk=st.sampled_from([1, 7, 64, 1 << 20]),
    seed=st.integers(0, 2**31),
)
def test_the_mlm_loss_and_its_gradient_are_cross_entropys(rows, vocab, ignored, scale, chunk, seed):
    """Any mix of ignored rows, any chunking, and any incoming gradient: a positive one
    rides on the logsumexp shift, zero, negative and infinite ones multiply."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cross_entropy, "CHUNK", chunk)
        check_against_cross_entropy(rows, vocab, ignored, scale, seed)


def check_against_cross_entropy(rows, vocab, ignored, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(rows, vocab, generator=generator)).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=generator)
    labels[torch.rand(rows, generator=generator) < ignored] = IGNORED
    ours, theirs = cross_entropy_sum(logits, labels), reference_loss(logits, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-5)
    (grad,) = torch.autograd.grad(ours * scale, logits)
    (expected,) = torch.autograd.grad(theirs * scale, logits)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_bf16_logits_get_a_bf16_gradient_computed_in_fp32(chunk, monkeypatch):
    monkeypatch.setattr(cross_entropy, "CHUNK", chunk)
    logits = (3 * torch.randn(30, 17)).bfloat16().requires_grad_()
    labels = torch.randint(0, 17, (30,))
    labels[::4] = IGNORED
    ours = cross_entropy_sum(logits, labels)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference_loss(logits, labels))
    (grad,) = torch.autograd.grad(ours, logits)
    (expected,) = torch.autograd.grad(reference_loss(logits, labels), logits)
    assert grad.dtype == torch.bfloat16
    # the reference rounds its fp32 gradient to bf16 once at the end, and so do we
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
