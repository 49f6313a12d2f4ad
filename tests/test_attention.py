"""Attention over packed tokens: the cumulative lengths, the kernel switch, and the contract
the variable-length kernel must meet, checked on the CPU.

The varlen kernels run on CUDA only. Here `reference_varlen` stands in for them: a plain
loop over the sequences, each its own softmax over its own real tokens, with the kernels'
call signature. Run through the very code the CUDA path runs (`varlen_attention`, and the
model with the switch pointed at it), it must give what the padded path gives; on a GPU,
tests/test_gpu.py holds the real kernels to the same reference.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_model import SMALL, random_batch, small_model

from bertpretrain.model import attention
from bertpretrain.model import bert as bert_module
from bertpretrain.model.architecture import BertConfig
from bertpretrain.model.attention import (
    VarlenKernel,
    attention_path,
    cumulative_lengths,
    pack,
    padded_attention,
    varlen_attention,
    varlen_kernel,
    why_not_varlen,
)

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def reference_varlen(q, k, v, cu_lens, max_len, dropout_p):
    """Per-sequence softmax attention, in the kernels' signature; no dropout."""
    outputs = []
    for start, end in zip(cu_lens[:-1].tolist(), cu_lens[1:].tolist(), strict=True):
        assert end - start <= max_len
        qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))  # (heads, n, d)
        scores = (qs @ ks.transpose(-1, -2)) * q.shape[-1] ** -0.5
        outputs.append((scores.softmax(-1) @ vs).transpose(0, 1))  # (n, heads, d)
    return torch.cat(outputs)


REFERENCE = VarlenKernel("reference", reference_varlen, dropout=False)

# The packed and padded paths sum in different orders, so they differ by float32 rounding:
# at most 4 eps of the values' largest magnitude, measured over 200 random packings (and 40
# models) at 1 and 2 threads, outputs and gradients alike. Held to 32 eps of that scale: a
# margin of 8 over the noise, and still a millionth of the values, far below any real bug.
NOISE = 32 * torch.finfo(torch.float32).eps


def assert_equal_but_for_rounding(actual, expected, msg=None) -> None:
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=NOISE * scale, msg=msg)


def packed_qkv(valid_lens: list[int], length: int, width: int, seed: int = 0):
    """Random packed (T, 3H) projections of sequences of `valid_lens`, and their packing."""
    packing = pack(torch.tensor(valid_lens), length)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(valid_lens), 3 * width, generator=g, requires_grad=True), packing


# --- cumulative lengths ---------------------------------------------------------------


def test_cumulative_lengths_are_int32_offsets_starting_at_zero():
    cu = cumulative_lengths(torch.tensor([3, 1, 4, 0, 2]))
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 3, 4, 8, 8, 10]


def test_each_sequence_is_packed_between_its_cumulative_lengths():
    valid_lens, length = [5, 1, 7, 3], 7
    packing = pack(torch.tensor(valid_lens), length)
    assert packing.cu_lens[-1] == len(packing.index)
    for b, n in enumerate(valid_lens):
        rows = packing.index[packing.cu_lens[b] : packing.cu_lens[b + 1]]
        assert rows.tolist() == [b * length + p for p in range(n)]


# --- the switch -----------------------------------------------------------------------


def test_the_cpu_takes_the_padded_path_in_every_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert varlen_kernel(CPU, dtype, 64) is None
        assert why_not_varlen(CPU, dtype, 64) == "the device is cpu, not CUDA"
    line = attention_path(BertConfig(100, dropout=0.1), CPU, torch.float32)
    assert line.startswith("attention: each sequence padded to its length rounded up")
    assert "sequences bucketed by length" in line
    assert "the device is cpu" in line and "attention dropout 0.1" in line
    line = attention_path(BertConfig(100, dropout=0.0), CPU, torch.float32)
    assert line.startswith("attention: on the batch padded")


@pytest.fixture
def ampere_or_newer(monkeypatch):
    """A visible CUDA GPU of compute capability 9.0, and torch's varlen kernel installed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=9)
    )
    monkeypatch.setattr(attention, "VARLEN", attention._torch_kernel())
    assert attention.VARLEN is not None, "this torch has torch.nn.attention.varlen"


def test_cuda_in_bf16_or_fp16_takes_the_varlen_kernel(ampere_or_newer):
    for dtype in (torch.bfloat16, torch.float16):
        kernel = varlen_kernel(CUDA, dtype, 64)
        assert kernel is attention.VARLEN
        assert kernel.name == "torch.nn.attention.varlen.varlen_attn"


@pytest.mark.parametrize(
    ("dtype", "head_dim", "reason"),
    [
        (torch.float32, 64, "float32 is not fp16 or bf16"),
        (torch.bfloat16, 264, "head dim 264 is not a multiple of 8 up to 256"),
        (torch.bfloat16, 12, "head dim 12 is not a multiple of 8 up to 256"),
    ],
)
def test_cuda_falls_back_to_padding_where_the_kernel_cannot_run(
    ampere_or_newer, dtype, head_dim, reason
):
    assert varlen_kernel(CUDA, dtype, head_dim) is None
    assert why_not_varlen(CUDA, dtype, head_dim) == reason


def test_a_gpu_older_than_ampere_takes_the_padded_path(ampere_or_newer, monkeypatch):
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=7)
    )
    assert varlen_kernel(CUDA, torch.float16, 64) is None
    assert "older than Ampere" in why_not_varlen(CUDA, torch.float16, 64)


def test_without_a_kernel_installed_the_log_says_why(ampere_or_newer, monkeypatch):
    monkeypatch.setattr(attention, "VARLEN", None)
    assert varlen_kernel(CUDA, torch.bfloat16, 64) is None
    line = attention_path(BertConfig(100), CUDA, torch.bfloat16)
    assert "has no torch.nn.attention.varlen and flash_attn is not installed" in line


def test_the_log_says_when_attention_dropout_is_off_on_the_kernel(ampere_or_newer):
    line = attention_path(BertConfig(100, dropout=0.1), CUDA, torch.bfloat16)
    assert line.startswith("attention: torch.nn.attention.varlen.varlen_attn on the packed")
    assert "attention dropout is OFF on this kernel" in line and "(0.1) stay" in line
    quiet = attention_path(BertConfig(100, dropout=0.0), CUDA, torch.bfloat16)
    assert quiet.endswith("no padding; attention dropout 0.0")


def test_a_kernel_with_dropout_keeps_attention_dropout(ampere_or_newer, monkeypatch):
    monkeypatch.setattr(attention, "VARLEN", REFERENCE._replace(name="flash", dropout=True))
    line = attention_path(BertConfig(100, dropout=0.1), CUDA, torch.bfloat16)
    assert line == "attention: flash on the packed tokens, no padding; attention dropout 0.1"


# --- the contract: per-sequence attention is what the padded path computes -------------


def test_per_sequence_attention_equals_the_padded_path():
    qkv, packing = packed_qkv([9, 1, 4, 9, 6], length=9, width=32)
    padded = padded_attention(qkv, packing, num_heads=4, dropout_p=0.0)
    packed = varlen_attention(qkv, packing, 4, REFERENCE, 0.0)
    assert packed.shape == (len(qkv), 32)
    assert_equal_but_for_rounding(packed, padded)

    grad = torch.randn_like(packed)
    (padded_grad,) = torch.autograd.grad(padded, qkv, grad)
    (packed_grad,) = torch.autograd.grad(packed, qkv, grad)
    assert_equal_but_for_rounding(packed_grad, padded_grad)


def test_the_padded_path_reads_sdpas_output_in_either_layout(monkeypatch):
    """CUDA's kernels may return (B, heads, L, d) as a view of (B, L, heads, d) memory, the
    CPU's contiguous: the rows and their gradients are the same either way."""
    qkv, packing = packed_qkv([9, 1, 4, 9, 6], length=9, width=32)
    grad = torch.randn(len(qkv), 32)
    heads_first = padded_attention(qkv, packing, num_heads=4, dropout_p=0.0)
    (heads_first_grad,) = torch.autograd.grad(heads_first, qkv, grad)
    sdpa = F.scaled_dot_product_attention

    def rows_first(*args, **kwargs):
        return sdpa(*args, **kwargs).transpose(1, 2).contiguous().transpose(1, 2)

    monkeypatch.setattr(F, "scaled_dot_product_attention", rows_first)
    out = padded_attention(qkv, packing, num_heads=4, dropout_p=0.0)
    (out_grad,) = torch.autograd.grad(out, qkv, grad)
    assert torch.equal(out, heads_first) and torch.equal(out_grad, heads_first_grad)


def take_the_varlen_path(monkeypatch) -> None:
    """Point the model's switch at `reference_varlen`: Layer.attention then runs the very
    code of the CUDA path, with the reference where the kernel would be."""
    monkeypatch.setattr(bert_module, "varlen_kernel", lambda device, dtype, head_dim: REFERENCE)


def losses_and_gradients(batch: dict) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    bert = small_model(dropout=0.0).train()
    losses = bert.losses(batch)
    sum(losses).backward()
    return list(losses), {name: p.grad for name, p in bert.named_parameters()}


def test_the_model_on_the_varlen_path_trains_as_on_the_padded_path(monkeypatch):
    batch = random_batch(BertConfig(**SMALL), batch=5, length=12, preds=3)
    padded_losses, padded_grads = losses_and_gradients(batch)
    take_the_varlen_path(monkeypatch)
    packed_losses, packed_grads = losses_and_gradients(batch)
    assert_equal_but_for_rounding(torch.stack(packed_losses), torch.stack(padded_losses))
    for name, grad in padded_grads.items():
        assert_equal_but_for_rounding(packed_grads[name], grad, msg=name)


def test_the_varlen_path_encodes_as_the_padded_path(monkeypatch):
    bert = small_model().eval()
    batch = random_batch(bert.config, batch=4, length=10, preds=2)
    args = batch["tokens"], batch["segments"], batch["valid_lens"], batch["pred_positions"]
    padded = bert(*args)
    take_the_varlen_path(monkeypatch)
    for x, y in zip(bert(*args), padded, strict=True):
        assert_equal_but_for_rounding(x, y)
