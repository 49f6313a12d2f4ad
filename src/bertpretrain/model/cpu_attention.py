"""Training attention on the CPU: sequences bucketed by length, the backward written out.

Padding every sequence to the batch's L made attention's (heads, L, L) scores, softmax,
dropout mask and `@ v` cost B * L^2 whatever the lengths: for BERT-base at max_len 128,
where WikiText-2's sequences fill 42% of the positions, four fifths of that work (and of
the dropout's random draws) was on padding, and attention took 43% of a bf16 step. Here
each sequence is padded only to its length rounded up to a multiple of `granularity(L)`,
and the sequences of one rounded length are a bucket: a (heads * B_g, L_g, d) batch of its
own. The cost follows the sum of the squared lengths: 0.22 of the padded one at max_len
128, 0.63 at 64, 0.02 at 512 (WikiText-2, docs/benchmarks.md).

All buckets share flat buffers (q, k and v; the scores; the dropout mask; the output)
whose sizes are rounded like the packed rows (`rounded_rows`), so a step asks the
allocator for a few sizes, not a new one for every mix of lengths. q, k and v are
scattered once into their buckets' layout, each bucket's rows contiguous as `bmm` reads
them; the scale and the key mask ride on the scores' matmul (`baddbmm`); backward writes
the three gradients into one buffer of that layout, which a single gather packs again.
The arithmetic on the real positions is the padded path's, so it gives what autograd
gives up to float rounding (tests/test_custom_backward.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bertpretrain.model.attention import HALF, Packing, dropout_mask, rounded_rows


def granularity(length: int) -> int:
    """The multiple a sequence's padded length is rounded up to: at most 16 buckets, each a
    multiple of 8 positions (the matmuls' vector width)."""
    return max(8, length // 16)


def bucket_lengths(length: int) -> int:
    """How many bucket lengths sequences of at most `length` can take."""
    return -(-length // granularity(length))


# The squared coefficient of variation of sequence lengths: WikiText-2's are 0.06 at
# max_len 64 and 0.11 at 128 and 512; the plan, which knows only the mean, takes 0.1.
LENGTH_SPREAD = 0.1


def expected_bucket(fill: float, length: int) -> tuple[float, float]:
    """For sequences of mean length fill * L, a sequence's expected padded length and its
    square, as fractions of L and L^2: what the memory plan counts attention's buffers by
    (rounding up to `granularity` adds about half of it, and its square term q^2 / 3)."""
    mean, q = fill * length, granularity(length)
    padded = min(length, mean + q / 2)
    square = min(length**2, (1 + LENGTH_SPREAD) * mean**2 + q * mean + q**2 / 3)
    return padded / length, square / length**2


def chunk(batch: int, dtype: torch.dtype) -> int | None:
    """How many sequences a bucket's matmuls take at once in `dtype`, None for the whole
    bucket. In bf16 and fp16 buckets are padded to a multiple of it with empty sequences,
    so that each matmul has one of a few shapes, (heads * chunk, L_g, .) for each bucket
    length: on the CPU oneDNN compiles and caches such a matmul per shape, at 0.6 to 0.7
    MiB each, and a new batch size for every bucket of every step filled that cache with
    hundreds of MiB. fp32 matmuls keep nothing per shape: each bucket is one matmul."""
    return max(1, batch // 64) if dtype in HALF else None


class Bucket(NamedTuple):
    sequences: int  # B_g, a multiple of `chunk`: the last ones may be empty
    length: int  # L_g: every sequence of the bucket padded to this
    start: int  # where the bucket's positions start in the flat layout: sum of B * L before it
    scores_start: int  # where its scores start: sum of B * L * L before it (per head)
    bias: torch.Tensor  # (B_g, 1, L_g): 0 at a real key, -inf at padding


class Layout(NamedTuple):
    """Where each packed row's q, k and v sit among the buckets: row t's slot s of n (q, k
    and v of each head: n = 3 * heads) is n * start[t] + s * span[t] + local[t] of a flat
    (n * positions + 1, d) buffer laid out bucket by bucket, each (n, B_g * L_g, d)."""

    buckets: list[Bucket]
    start: torch.Tensor  # (rows,) the start of the row's bucket
    local: torch.Tensor  # (rows,) the row's position in its bucket's (B_g, L_g) grid
    span: torch.Tensor  # (rows,) B_g * L_g of the row's bucket
    positions: int  # sum of B_g * L_g, rounded up; one more, the last, is a spare
    scores: int  # sum of B_g * L_g^2 (per head), rounded up
    chunk: int | None  # sequences a matmul takes at once (`chunk`); None: the whole bucket


def layout(packing: Packing, dtype: torch.dtype = torch.float32) -> Layout:
    """Buckets of the sequences by rounded length. Rows past `packing.real` (padding that
    rounds a step's row count) have no sequence: all their slots are the spare position,
    which reads as zero."""
    lengths = (packing.cu_lens[1 : packing.batch + 1] - packing.cu_lens[: packing.batch]).long()
    q = granularity(packing.length)
    padded = (lengths + q - 1).div(q, rounding_mode="floor").mul(q).clamp(max=packing.length)
    order = torch.argsort(padded, stable=True)
    sizes, counts = torch.unique_consecutive(padded[order], return_counts=True)
    start_of, rank_of, span_of = (torch.empty_like(lengths) for _ in range(3))
    piece = chunk(packing.batch, dtype)
    buckets, first, start, scores, m = [], 0, 0, 0, piece or 1
    for size, count in zip(sizes.tolist(), counts.tolist(), strict=True):
        members = order[first : first + count]
        slots = -(-count // m) * m  # the empty ones attend to all their (zero) keys
        start_of[members], span_of[members] = start, slots * size
        rank_of[members] = torch.arange(count) * size
        keep = torch.arange(size) < lengths[members, None]
        bias = torch.zeros(slots, 1, size)
        bias[:count].masked_fill_(~keep[:, None, :], float("-inf"))
        buckets.append(Bucket(slots, size, start, scores, bias))
        first, start, scores = first + count, start + slots * size, scores + slots * size**2
    sequences = packing.batch + len(buckets) * m  # at most, the empty ones included
    positions = rounded_rows(start, sequences * packing.length)
    real = packing.index[: packing.real]
    sequence = real // packing.length
    rows = len(packing.index)
    row_start = torch.full((rows,), positions, dtype=torch.long)
    local, span = torch.zeros(rows, dtype=torch.long), torch.zeros(rows, dtype=torch.long)
    row_start[: packing.real] = start_of[sequence]
    local[: packing.real] = rank_of[sequence] + real % packing.length
    span[: packing.real] = span_of[sequence]
    most = sequences * packing.length**2
    return Layout(buckets, row_start, local, span, positions, rounded_rows(scores, most), piece)


def slots(lay: Layout, n: int) -> torch.Tensor:
    """(rows * n,) each row's n slots in a flat (n * positions + 1, d) buffer (`Layout`)."""
    index = (n * lay.start + lay.local)[:, None] + torch.arange(n) * lay.span[:, None]
    return index.flatten()


@torch.compiler.disable
def cpu_attention(
    qkv: torch.Tensor, packing: Packing, num_heads: int, dropout_p: float
) -> torch.Tensor:
    """Multi-head attention of packed (rows, 3H) projections, each sequence over its own
    keys, with attention dropout `dropout_p`: (rows, H)."""
    lay = layout(packing, qkv.dtype)
    return _Attention.apply(qkv, lay, num_heads, dropout_p)


def _views(flat: torch.Tensor, bucket: Bucket, n: int, heads: int) -> torch.Tensor:
    """Bucket `bucket`'s (n, heads * B_g, L_g, d) block of a flat (n * heads * positions, d)
    buffer."""
    d = flat.shape[-1]
    rows = bucket.sequences * bucket.length
    block = flat[n * heads * bucket.start : n * heads * (bucket.start + rows)]
    return block.view(n, heads * bucket.sequences, bucket.length, d)


def _scores(flat: torch.Tensor, bucket: Bucket, heads: int) -> torch.Tensor:
    """Bucket `bucket`'s (heads * B_g, L_g, L_g) block of a flat scores buffer."""
    size = heads * bucket.sequences * bucket.length**2
    start = heads * bucket.scores_start
    return flat[start : start + size].view(heads * bucket.sequences, bucket.length, bucket.length)


def _pieces(step: int | None, *tensors: torch.Tensor):
    """The tensors cut along their first dim into pieces of `step` rows (None: whole), side
    by side."""
    step = step or len(tensors[0])
    for at in range(0, len(tensors[0]), step):
        yield tuple(t[at : at + step] for t in tensors)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, lay, num_heads, dropout_p):
        with torch.autocast("cpu", enabled=False):  # compute in qkv's dtype, as autocast made it
            rows, width = qkv.shape
            d = width // 3 // num_heads
            step = num_heads * lay.chunk if lay.chunk else None
            # zero: a padded position's q, k and v, and the spare row padding rows read
            padded = qkv.new_zeros(3 * num_heads * lay.positions + 1, d)
            padded.index_copy_(0, slots(lay, 3 * num_heads), qkv.view(rows * 3 * num_heads, d))
            probabilities = qkv.new_empty(num_heads * lay.scores)
            used = num_heads * sum(b.sequences * b.length**2 for b in lay.buckets)
            for b in lay.buckets:
                q, k, _ = _views(padded, b, 3, num_heads).unbind(0)
                scores = _scores(probabilities, b, num_heads)
                bias = b.bias.to(qkv.dtype).repeat(num_heads, 1, 1)
                for bias_, q_, k_, s_ in _pieces(step, bias, q, k, scores):
                    torch.baddbmm(bias_, q_, k_.transpose(1, 2), alpha=d**-0.5, out=s_)
                torch.softmax(scores, -1, out=scores)
            keep, scale = dropout_mask(probabilities.shape, dropout_p, used)
            dropped = probabilities if keep is None else probabilities * keep * scale
            out = qkv.new_empty(num_heads * lay.positions + 1, d)
            out[-1].zero_()
            for b in lay.buckets:
                v = _views(padded, b, 3, num_heads)[2]
                o = _views(out, b, 1, num_heads)[0]
                for p_, v_, o_ in _pieces(step, _scores(dropped, b, num_heads), v, o):
                    torch.bmm(p_, v_, out=o_)
            ctx.save_for_backward(padded, probabilities, keep, dropped)
            ctx.lay, ctx.scale, ctx.heads = lay, scale, num_heads
            return out.index_select(0, slots(lay, num_heads)).view(rows, width // 3)

    @staticmethod
    def backward(ctx, grad):
        padded, probabilities, keep, dropped = ctx.saved_tensors
        lay, heads = ctx.lay, ctx.heads
        with torch.autocast("cpu", enabled=False):
            d = padded.shape[-1]
            rows, step = grad.shape[0], heads * lay.chunk if lay.chunk else None
            g = grad.new_zeros(heads * lay.positions + 1, d)
            g.index_copy_(0, slots(lay, heads), grad.reshape(rows * heads, d))
            grads = torch.empty_like(padded)
            grads[-1].zero_()  # what padding rows gather
            # Each buffer is dropped as soon as it is used: backward's peak is then the
            # three gradients and two flat buffers of scores (memory/activations.py).
            d_probabilities = torch.empty_like(probabilities)
            for b in lay.buckets:
                v, gv = _views(padded, b, 3, heads)[2], _views(grads, b, 3, heads)[2]
                go = _views(g, b, 1, heads)[0]
                p, dp = _scores(dropped, b, heads), _scores(d_probabilities, b, heads)
                for p_, go_, v_, gv_, dp_ in _pieces(step, p, go, v, gv, dp):
                    torch.bmm(p_.transpose(1, 2), go_, out=gv_)
                    torch.bmm(go_, v_.transpose(1, 2), out=dp_)
            del g
            if keep is not None:
                d_probabilities.mul_(keep).mul_(ctx.scale)
            d_scores = torch.empty_like(probabilities)
            for b in lay.buckets:
                torch._softmax_backward_data(
                    _scores(d_probabilities, b, heads),
                    _scores(probabilities, b, heads),
                    -1,
                    probabilities.dtype,
                    grad_input=_scores(d_scores, b, heads),
                )
            del d_probabilities
            d_scores.mul_(d**-0.5)
            for b in lay.buckets:
                q, k, _ = _views(padded, b, 3, heads).unbind(0)
                gq, gk, _ = _views(grads, b, 3, heads).unbind(0)
                ds = _scores(d_scores, b, heads)
                for ds_, q_, k_, gq_, gk_ in _pieces(step, ds, q, k, gq, gk):
                    torch.bmm(ds_, k_, out=gq_)
                    torch.bmm(ds_.transpose(1, 2), q_, out=gk_)
            del d_scores
            gathered = grads.index_select(0, slots(lay, 3 * heads))
            return gathered.view(rows, 3 * heads * d), None, None, None
