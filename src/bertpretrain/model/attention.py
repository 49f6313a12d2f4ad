"""Self-attention over packed tokens: where the real tokens are, and which kernel runs.

The model keeps only the T real tokens of a padded (B, L) batch (`pack`). Attention then
takes one of two paths, chosen per call by `varlen_kernel` and named by `attention_path`
for the training log:

- **variable-length** (CUDA, fp16/bf16, an Ampere or newer GPU, head dim a multiple of 8
  up to 256): Flash Attention's varlen kernel reads the packed (T, heads, d) q, k and v as
  they are, sequence b being packed rows cu_lens[b]:cu_lens[b + 1]. Nothing is padded.
  `flash_attn.flash_attn_varlen_func` where that package is installed (it applies the
  attention dropout), else `torch.nn.attention.varlen.varlen_attn` (it has no dropout:
  on that kernel attention dropout is off, and the log line says so).
- **padded** (everywhere else): the tokens are scattered back to (B, heads, L, d) for
  scaled_dot_product_attention with a key mask (`padded_attention`); on the CPU with
  attention dropout, model/cpu_attention.py's hand-written forward and backward instead,
  which pads each sequence only to its length rounded up (sequences bucketed by length)
  and draws its mask with `dropout_mask`, cheap on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from bertpretrain.model.architecture import BertConfig

HALF = (torch.float16, torch.bfloat16)  # the dtypes Flash Attention computes in
LARGEST_HEAD_DIM = 256  # Flash Attention's limit; it also wants a multiple of 8


class Packing(NamedTuple):
    """Where the real tokens of a padded (B, L) batch are: every layer but attention works
    on those T tokens only, so padding (a third of a WikiText batch) costs nothing there.

    A training step packs `rows` >= T rows: the T real tokens, then a few padding positions
    that round the row count up to one of a handful of sizes (`rounded_rows`). Every tensor
    of the step then comes in those few shapes, so the allocator reuses its blocks instead
    of fragmenting on a new size every step. The extra rows are keys to nothing (`keep`),
    never reach a loss, and get no dropout draws (`real`), so the real rows compute exactly
    what they would alone.
    """

    index: torch.Tensor  # (rows,) flat positions b * L + p: the real tokens in order, then padding
    keep: torch.Tensor  # (B, 1, 1, L) True where the key is a real token
    cu_lens: (
        torch.Tensor
    )  # (sequences + 1,) int32: sequence s is packed rows cu_lens[s]:cu_lens[s + 1]
    batch: int
    length: int
    real: int  # T: rows [0, T) are the real tokens


def pack(valid_lens: torch.Tensor, length: int, round_rows: bool = False) -> Packing:
    """The packing of a (B, length) batch; with `round_rows`, padded to `rounded_rows`."""
    keep = torch.arange(length, device=valid_lens.device) < valid_lens[:, None]  # (B, L)
    flat = keep.flatten()
    if not round_rows:
        index = flat.nonzero().squeeze(1)
        real = rows = len(index)
    else:
        real = int(valid_lens.sum())
        rows = rounded_rows(real, flat.numel())
        # real positions first, each group in order: (B * L,) then cut to `rows`
        index = torch.argsort(~flat, stable=True)[:rows]
    cu_lens = cumulative_lengths(valid_lens)
    if rows > real:
        # the padding rows form sequences of their own, at most L long, as the varlen
        # kernels require every sequence to be
        ends = [*range(real + length, rows, length), rows]
        cu_lens = torch.cat([cu_lens, torch.tensor(ends, dtype=torch.int32, device=cu_lens.device)])
    return Packing(index, keep[:, None, None, :], cu_lens, len(valid_lens), length, real)


def rounded_rows(count: int, most: int) -> int:
    """`count` rounded up to a multiple of the power of two nearest below count / 32 (at
    least 8), at most `most`: under 3.2% more rows, and only a few sizes a run through."""
    step = 2 ** max(3, count.bit_length() - 6)
    return min(most, -(-count // step) * step)


def cumulative_lengths(valid_lens: torch.Tensor) -> torch.Tensor:
    """(B + 1,) int32 offsets of each sequence in the packed tokens: 0, n0, n0 + n1, ...
    (`index` lists the real tokens row by row, so sequence b's follow sequence b - 1's)."""
    return F.pad(valid_lens.cumsum(0, dtype=torch.int32), (1, 0))


def dropout(x: torch.Tensor, p: float, training: bool, real: int | None = None) -> torch.Tensor:
    """Inverted dropout with a cheaper mask on CPU (`dropout_mask`); of packed (rows, H)
    activations only the first `real` rows draw (the rest pad a step's shape and are never
    used). GPUs' Philox generator is already fast: they use F.dropout."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    keep, scale = dropout_mask(x.shape, p, real)
    return x * keep * scale


def dropout_mask(
    shape: torch.Size, p: float, real: int | None = None
) -> tuple[torch.Tensor | None, float]:
    """A CPU dropout mask of `shape` (True: kept) and the scale of the kept values; (None,
    1.0) when `p` is 0. Only the first `real` rows (of the first dim) draw; the rest keep.

    `bernoulli_` draws one Mersenne-twister number per element and cost about a fifth of a
    tiny-BERT step; here every 64-bit draw gives four 16-bit uniforms. The keep probability
    is quantised to 1/65536 and the scale uses that exact probability, so the output stays
    unbiased. Drawing for the real rows alone keeps the random stream, and so every mask
    and loss, what it is without a step's padding rows.
    """
    if p == 0.0:
        return None, 1.0
    threshold = round(p * 65536)
    if threshold in (0, 65536):  # p too close to 0 or 1 for 16 bits
        return torch.rand(shape) >= p, (1 / (1 - p) if p < 1 else 0.0)
    n = shape.numel()
    drawn = n if real is None else real * (n // shape[0])  # the real rows come first
    words = torch.empty((n + 3) // 4, dtype=torch.int64)  # one shape per shape of x
    cut = (drawn + 3) // 4
    words[:cut].random_(-(2**63), 2**63 - 1)  # the very draws of torch.randint
    words[cut:].zero_()
    uniform16 = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return uniform16 >= threshold - 32768, 65536 / (65536 - threshold)


def padded_attention(
    qkv: torch.Tensor, packing: Packing, num_heads: int, dropout_p: float
) -> torch.Tensor:
    """SDPA on packed (T, 3H) projections padded back to (B, heads, L, d), padded keys
    masked out: the path on CUDA where the varlen kernel cannot run, and on the CPU without
    attention dropout (with it, the CPU takes model/cpu_attention.py)."""
    b, n, h3 = packing.batch, packing.length, qkv.shape[-1]
    d = h3 // 3 // num_heads
    slots = head_slots(packing, num_heads, 3)
    padded = scatter_heads(qkv, slots, 3 * b * num_heads * n, d)
    q, k, v = padded.view(3, b, num_heads, n, d).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.keep, dropout_p=dropout_p)
    rows = a.transpose(1, 2)
    if rows.is_contiguous():  # a kernel that writes (B, L, heads, d), as CUDA's may
        return rows.view(b * n, h3 // 3).index_select(0, packing.index)
    # as the CPU's: (B, heads, L, d), a row's heads apart, where its query's heads were
    q_slots = slots.view(-1, 3 * num_heads)[:, :num_heads].flatten()
    return a.reshape(-1, d).index_select(0, q_slots).view(-1, h3 // 3)


def head_slots(packing: Packing, num_heads: int, groups: int = 1) -> torch.Tensor:
    """(rows * groups * heads,) where each packed row's heads sit in a (groups, B, heads, L)
    grid, row by row, group by group, head by head: the row at flat position b * L + p, head
    h of group g (query, key or value), goes to ((g * B + b) * heads + h) * L + p."""
    index, length = packing.index, packing.length
    b, p = index.div(length, rounding_mode="floor"), index % length
    group_at = torch.arange(groups, device=index.device) * packing.batch * num_heads * length
    head_at = torch.arange(num_heads, device=index.device) * length
    slot = (group_at[:, None] + head_at).flatten()  # (groups * heads,), group-major
    return ((b * num_heads * length + p)[:, None] + slot).flatten()


def scatter_heads(x: torch.Tensor, index: torch.Tensor, positions: int, d: int) -> torch.Tensor:
    """Packed (rows, n * d) projections at `index` (`head_slots`) of a zero (positions, d)
    buffer: the (B, heads, L, d) layout attention's matmuls read, with no copy to make it.
    Scattering to (B, L, n * d) and permuting cost a copy each way (and index_copy's new
    tensor another): a third of the last layer's attention time in a tiny fp32 step."""
    return x.new_zeros(positions, d).index_copy_(0, index, x.reshape(-1, d))


class VarlenKernel(NamedTuple):
    """A variable-length attention kernel behind one call signature:
    run(q, k, v, cu_lens, max_len, dropout_p) -> (T, heads, d), q, k, v each (T, heads, d)."""

    name: str  # for the log
    run: Callable[..., torch.Tensor]
    dropout: bool  # whether `run` applies dropout_p to the attention probabilities


def _flash_attn_kernel() -> VarlenKernel | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:  # not installed, or built for another torch
        return None

    def run(q, k, v, cu_lens, max_len, dropout_p):
        return flash_attn_varlen_func(
            q, k, v, cu_lens, cu_lens, max_len, max_len, dropout_p=dropout_p
        )

    return VarlenKernel("flash_attn.flash_attn_varlen_func", run, dropout=True)


def _torch_kernel() -> VarlenKernel | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch before 2.9
        return None
    # varlen_attn logs one INFO line per call, which a Hydra run (root logger at INFO)
    # would write into train.log for every layer of every step.
    logging.getLogger("torch.nn.attention.varlen").setLevel(logging.WARNING)

    def run(q, k, v, cu_lens, max_len, dropout_p):
        # No dropout argument: dropout_p is not applied (VarlenKernel.dropout is False).
        return varlen_attn(q, k, v, cu_lens, cu_lens, max_len, max_len)

    return VarlenKernel("torch.nn.attention.varlen.varlen_attn", run, dropout=False)


# What this installation offers, found once at import: a lookup inside the forward would
# cost every layer of every step, and torch.compile traces a constant for free.
VARLEN = _flash_attn_kernel() or _torch_kernel()


def why_not_varlen(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why attention on `device` in `dtype` cannot take the variable-length kernel, or
    None when it does. A CUDA device this process cannot see (planning for a GPU on a CPU
    machine) is taken to be an Ampere or newer one."""
    if device.type != "cuda":
        return f"the device is {device.type}, not CUDA"
    if dtype not in HALF:
        return f"{str(dtype).removeprefix('torch.')} is not fp16 or bf16"
    if head_dim > LARGEST_HEAD_DIM or head_dim % 8:
        return f"head dim {head_dim} is not a multiple of 8 up to {LARGEST_HEAD_DIM}"
    if torch.cuda.is_available() and torch.cuda.get_device_properties(device).major < 8:
        return "the GPU is older than Ampere (compute capability 8.0)"
    if VARLEN is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen and flash_attn is not installed"
    return None


def varlen_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> VarlenKernel | None:
    """The kernel attention takes on `device` in `dtype`; None for the padded path."""
    return VARLEN if why_not_varlen(device, dtype, head_dim) is None else None


def varlen_attention(
    qkv: torch.Tensor,
    packing: Packing,
    num_heads: int,
    kernel: VarlenKernel,
    dropout_p: float,
) -> torch.Tensor:
    """Multi-head self-attention of packed (T, 3H) projections, sequence by sequence:
    each token attends to the real tokens of its own sequence only."""
    tokens, width = qkv.shape
    # views of the (T, 3H) projections: the kernels want only the last dim contiguous
    q, k, v = qkv.view(tokens, 3, num_heads, width // 3 // num_heads).unbind(1)  # (T, heads, d)
    # max_len: the padded length bounds every sequence's. The kernels size their grid by it
    # and stop at each sequence's end, and the true maximum would cost a device sync.
    out = kernel.run(q, k, v, packing.cu_lens, packing.length, dropout_p)
    return out.reshape(tokens, width // 3)  # (T, H)


def attention_path(config: BertConfig, device: torch.device, dtype: torch.dtype) -> str:
    """One line for the training log: the attention kernel training on `device` in `dtype`
    takes, and what becomes of attention dropout there."""
    head_dim = config.hidden_size // config.num_heads
    reason = why_not_varlen(torch.device(device), dtype, head_dim)
    p = config.dropout
    if reason is not None and p > 0 and torch.device(device).type == "cpu":
        return (
            "attention: each sequence padded to its length rounded up to a multiple of "
            f"max(8, max_len / 16), sequences bucketed by length ({reason}); attention dropout {p}"
        )
    if reason is not None:
        return (
            "attention: on the batch padded to (B, heads, L, d) "
            f"with a key mask ({reason}); attention dropout {p}"
        )
    line = f"attention: {VARLEN.name} on the packed tokens, no padding"
    if p == 0 or VARLEN.dropout:
        return f"{line}; attention dropout {p}"
    return f"{line}; attention dropout is OFF on this kernel (it has none), the other dropouts ({p}) stay"
