"""Training attention on the CPU: the padded path with its backward written out.

Autograd's version of the padded path (scatter the packed q, k, v to (B, heads, L, d),
scores, mask, softmax, dropout, `@ v`, gather back) spent a sixth of a tiny fp32 step on
copies around its matmuls: the scatter's zero fill and out-of-place copy, the permutes'
contiguous copies before `bmm`, `unbind`'s backward stacking the three gradients, the
scaled and masked scores as separate tensors. Here q, k and v are scattered once, straight
into the layout `bmm` reads, (3, heads, B, L, d); the scale and the key mask ride on the
scores' matmul (`baddbmm`); and backward writes the three gradients into one buffer of that
layout, which a single gather packs again. The arithmetic is the same, so it gives what
autograd gives up to float rounding (tests/test_custom_backward.py holds it there, dropout
included).
"""

from __future__ import annotations

import torch

from bertpretrain.model.attention import Packing, dropout_mask


def cpu_attention(
    qkv: torch.Tensor, packing: Packing, num_heads: int, dropout_p: float
) -> torch.Tensor:
    """Multi-head attention of packed (rows, 3H) projections on the padded batch, padded
    keys masked out, with attention dropout `dropout_p`: (rows, H)."""
    keep = packing.keep.view(packing.batch, 1, packing.length)
    # each key's additive mask for baddbmm: 0 for a real token, -inf for padding
    bias = torch.zeros(keep.shape, dtype=qkv.dtype).masked_fill_(~keep, float("-inf"))
    return _Attention.apply(qkv, packing.index, bias.repeat(num_heads, 1, 1), num_heads, dropout_p)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, index, bias, num_heads, dropout_p):
        with torch.autocast("cpu", enabled=False):  # compute in qkv's dtype, as autocast made it
            rows, width = qkv.shape
            length = bias.shape[-1]
            b = len(bias) // num_heads
            d = width // 3 // num_heads
            # (3 * heads, B * L, d): q, k, v of every padded position, zero at padding
            padded = qkv.new_zeros(3 * num_heads, b * length, d)
            padded.index_copy_(1, index, qkv.view(rows, 3 * num_heads, d).transpose(0, 1))
            q, k, v = padded.view(3, num_heads * b, length, d).unbind(0)  # contiguous views
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=d**-0.5)  # (heads * B, L, L)
            probabilities = torch.softmax(scores, -1, out=scores)
            keep, scale = dropout_mask(probabilities.shape, dropout_p)
            dropped = probabilities if keep is None else probabilities * keep * scale
            out = torch.bmm(dropped, v).view(num_heads, b * length, d)
            ctx.save_for_backward(index, padded, probabilities, keep, dropped)
            ctx.scale = scale
            return _gather(out, index)

    @staticmethod
    def backward(ctx, grad):
        index, padded, probabilities, keep, dropped = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            three_heads, positions, d = padded.shape
            heads = three_heads // 3
            length = probabilities.shape[-1]
            q, k, v = padded.view(3, -1, length, d).unbind(0)
            g = grad.new_zeros(heads, positions, d)
            g.index_copy_(1, index, grad.view(-1, heads, d).transpose(0, 1))
            g = g.view(-1, length, d)  # (heads * B, L, d)
            # Each buffer is dropped as soon as it is used: backward's peak is then the
            # three gradients and two (heads * B, L, L) tensors (memory/activations.py).
            grads = torch.empty_like(padded).view(3, -1, length, d)
            torch.bmm(dropped.transpose(1, 2), g, out=grads[2])
            d_probabilities = torch.bmm(g, v.transpose(1, 2))
            del g
            if keep is not None:
                d_probabilities.mul_(keep).mul_(ctx.scale)
            d_scores = torch._softmax_backward_data(
                d_probabilities, probabilities, -1, probabilities.dtype
            ).mul_(d**-0.5)
            del d_probabilities
            torch.bmm(d_scores, k, out=grads[0])
            torch.bmm(d_scores.transpose(1, 2), q, out=grads[1])
            del d_scores
            return _gather(grads.view(three_heads, positions, d), index), None, None, None, None


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The packed rows (len(index), n * d) of a (n, positions, d) tensor: gathered from
    its (positions, n, d) view in one pass, twice as fast as index_select then transpose."""
    n, _, d = x.shape
    out = x.new_empty(len(index), n, d)
    torch.index_select(x.permute(1, 0, 2), 0, index, out=out)
    return out.view(len(index), n * d)
