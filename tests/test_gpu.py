"""The CUDA path, on a GPU: the variable-length kernel against the per-sequence reference
of tests/test_attention.py, and the model's contracts (packing, padding, dropout, gradient
checkpointing) on CUDA in bf16 and fp32.

Every test here needs a CUDA GPU and skips cleanly without one; scripts/gpu_check.sh runs
them on a GPU machine. Tolerances are bf16's: about 3 significant digits.
"""

from __future__ import annotations

import pytest
import torch
from test_attention import REFERENCE, packed_qkv
from test_model import random_batch, small_model

from bertpretrain.model import attention
from bertpretrain.model import bert as bert_module
from bertpretrain.model.attention import attention_path, varlen_attention, varlen_kernel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
# hidden 256 over 4 heads: head dim 64, as in BERT-base and -large
SIZE = dict(vocab_size=997, hidden_size=256, num_heads=4, ffn_size=512)
# relative error (of a whole tensor, by its norm) a half-precision kernel may have
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.float() - reference.float()).norm() / reference.float().norm()).item()


def assert_gradients_close(grads: dict, reference: dict, rel: float) -> None:
    """Each gradient within `rel` of its reference's norm; one that is zero in exact
    arithmetic (the key bias's: softmax ignores what is added to a whole row of scores)
    holds only rounding noise, so it is held to a thousandth of the largest instead."""
    largest = max(grad.float().norm().item() for grad in reference.values())
    for name, expected in reference.items():
        error = (grads[name].float() - expected.float()).norm().item()
        assert error <= rel * max(expected.float().norm().item(), 1e-3 * largest), name


def on_cuda(batch: dict) -> dict:
    return {k: v.to(CUDA) for k, v in batch.items()}


def bf16():
    return torch.autocast("cuda", torch.bfloat16)


@pytest.fixture
def fp32_matmuls():
    """Plain fp32 matmuls (no TF32), whatever the process set before."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def test_this_gpu_takes_the_varlen_kernel_in_bf16_and_fp16():
    for dtype in (torch.bfloat16, torch.float16):
        assert varlen_kernel(CUDA, dtype, 64) is not None, attention.why_not_varlen(CUDA, dtype, 64)
    assert varlen_kernel(CUDA, torch.float32, 64) is None
    print(attention_path(bert_module.BertConfig(100, dropout=0.1), CUDA, torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_varlen_kernel_computes_per_sequence_attention(dtype):
    qkv, packing = packed_qkv([128, 1, 77, 128, 3, 64], length=128, width=768)
    qkv = qkv.detach().to(CUDA, dtype).requires_grad_()
    packing = packing._replace(
        **{k: getattr(packing, k).to(CUDA) for k in ("index", "keep", "cu_lens")}
    )
    exact = qkv.detach().float().requires_grad_()  # the same values, computed in fp32

    out = varlen_attention(qkv, packing, 12, varlen_kernel(CUDA, dtype, 64), 0.0)
    reference = varlen_attention(exact, packing, 12, REFERENCE, 0.0)
    assert out.dtype == dtype and out.shape == reference.shape
    assert relative_error(out, reference) < TOLERANCE[dtype]

    grad = torch.randn_like(reference)
    (kernel_grad,) = torch.autograd.grad(out, qkv, grad.to(dtype))
    (reference_grad,) = torch.autograd.grad(reference, exact, grad)
    assert relative_error(kernel_grad, reference_grad) < 2 * TOLERANCE[dtype]


def test_the_model_in_bf16_runs_attention_through_the_varlen_kernel(monkeypatch):
    calls = []

    def counted(*args):
        calls.append(args[3].name)
        return varlen_attention(*args)

    monkeypatch.setattr(bert_module, "varlen_attention", counted)
    bert = small_model(**SIZE).to(CUDA).train()
    batch = on_cuda(random_batch(bert.config, batch=4, length=32, preds=4))
    with bf16():
        sum(bert.losses(batch)).backward()
    assert calls == [attention.VARLEN.name] * bert.config.num_layers


def losses_and_gradients(batch: dict, seed: int = 0, **config) -> tuple[list[float], dict]:
    bert = small_model(seed, **{**SIZE, "dropout": 0.0, **config}).to(CUDA).train()
    with bf16():
        losses = bert.losses(batch)
    sum(losses).backward()
    return [x.item() for x in losses], {n: p.grad for n, p in bert.named_parameters()}


def test_varlen_training_in_bf16_matches_the_padded_path(monkeypatch):
    batch = on_cuda(random_batch(bert_module.BertConfig(**SIZE), batch=8, length=64, preds=8))
    packed_losses, packed_grads = losses_and_gradients(batch)
    monkeypatch.setattr(bert_module, "varlen_kernel", lambda device, dtype, head_dim: None)
    padded_losses, padded_grads = losses_and_gradients(batch)
    assert packed_losses == pytest.approx(padded_losses, rel=1e-2)
    assert_gradients_close(packed_grads, padded_grads, rel=5e-2)


def test_a_row_encodes_the_same_alone_and_in_a_padded_batch_in_bf16():
    bert = small_model(**SIZE).to(CUDA).eval()
    batch = on_cuda(random_batch(bert.config, batch=4, length=48, preds=2))
    with torch.no_grad(), bf16():
        encoded, _, nsp = bert(
            batch["tokens"], batch["segments"], batch["valid_lens"], batch["pred_positions"]
        )
        for i in range(4):
            n = int(batch["valid_lens"][i])
            row = {k: v[i : i + 1] for k, v in batch.items()}
            alone, _, nsp_alone = bert(
                row["tokens"][:, :n],
                row["segments"][:, :n],
                row["valid_lens"],
                row["pred_positions"],
            )
            assert relative_error(encoded[i : i + 1, :n], alone) < 1e-2
            torch.testing.assert_close(nsp[i : i + 1].float(), nsp_alone.float(), rtol=0, atol=1e-2)


def test_fp32_on_cuda_computes_what_the_cpu_computes(fp32_matmuls):
    bert = small_model(**SIZE, dropout=0.0).eval()
    batch = random_batch(bert.config, batch=6, length=40, preds=5)
    with torch.no_grad():
        on_cpu = bert.losses(batch)
        on_gpu = bert.to(CUDA).losses(on_cuda(batch))
    torch.testing.assert_close([x.cpu() for x in on_gpu], list(on_cpu), rtol=1e-4, atol=1e-5)


def test_dropout_on_cuda_is_stochastic_and_follows_the_seed():
    bert = small_model(**SIZE, dropout=0.1).to(CUDA).train()
    batch = on_cuda(random_batch(bert.config, batch=4, length=32, preds=4))
    with torch.no_grad(), bf16():
        torch.manual_seed(0)
        first, second = bert.losses(batch), bert.losses(batch)
        torch.manual_seed(0)
        again = bert.losses(batch)
    assert not torch.equal(first[0], second[0])
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_gradient_checkpointing_on_cuda_gives_the_same_gradients():
    batch = on_cuda(random_batch(bert_module.BertConfig(**SIZE), batch=8, length=64, preds=8))
    results = []
    for checkpointing in (False, True):
        bert = small_model(**SIZE, dropout=0.1).to(CUDA).train()
        bert.bert.gradient_checkpointing = checkpointing
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays them
        with bf16():
            losses = bert.losses(batch)
        sum(losses).backward()
        results.append((losses, {n: p.grad for n, p in bert.named_parameters()}))
    (plain_losses, plain), (recomputed_losses, recomputed) = results
    torch.testing.assert_close(recomputed_losses, plain_losses)
    # Flash Attention's backward adds with atomics: not bit-for-bit repeatable
    assert_gradients_close(recomputed, plain, rel=1e-2)
