"""The memory one training micro-batch's activations take: the tensors autograd saves for
backward in model/bert.py's packed training path (BertForPretraining.losses), counted by hand.

Weights can be read off the modules (bertpretrain.plan does); what backward keeps cannot,
so each `_..._bytes` function below mirrors one part of model/bert.py, one term a saved tensor,
its comment naming the tensor and the op that saves it. Sizes are by dtype: fp32 4 bytes,
bf16 2, int64 8, a bool dropout mask 1. Backward's own buffers (`_backward_peaks`) are
rough on purpose and say so. A change to what model/bert.py saves must change these terms:
tests/test_plan.py measures real training steps against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bertpretrain.data.examples import max_predictions
from bertpretrain.data.masking import MASK_RATE
from bertpretrain.device import resolve_precision
from bertpretrain.memory.budget import format_size
from bertpretrain.model.attention import rounded_rows, why_not_varlen
from bertpretrain.model.bert import BertConfig
from bertpretrain.model.cpu_attention import expected_bucket
from bertpretrain.model.cross_entropy import chunk_elements


@dataclass(frozen=True)
class _Shapes:
    """The sizes a micro-batch's saved tensors are made of, and their elements' bytes."""

    batch: int  # B sequences
    length: int  # L positions each: data.max_len
    hidden: int  # H
    ffn: int  # F
    heads: int
    vocab: int  # V
    tokens: int  # T real tokens: every layer but attention works on these alone
    masked: int  # P masked positions: the MLM head runs on these alone
    grid: int  # the last layer's query slots: B x (max predictions + 1) (model/queries.py)
    read: int  # the rows the last layer computes past attention: P real + B <cls>, rounded
    matmul: int  # a matmul's output or a Linear's saved input: bf16 2 under autocast, fp32 4
    head_norm: int  # mlm_LayerNorm's input: the matmul dtype, but CUDA autocast casts to fp32
    mask: int  # a dropout mask is bool: 1 byte an element, 0 without dropout
    logits_chunk: int  # how many MLM logits the loss upcasts to fp32 at once under bf16
    fused: bool  # attention by SDPA's fused kernel, without (B, heads, L, L) scores
    varlen: bool  # attention by Flash Attention's varlen kernel on the T packed tokens
    bucketed: int  # model/cpu_attention.py's positions: each sequence padded to its bucket
    bucketed_scores: int  # and its scores: B_g x L_g^2 summed over the buckets, per head

    @property
    def padded(self) -> int:
        return self.batch * self.length  # every position of the (B, L) batch

    @property
    def hand_written(self) -> bool:
        """Attention by model/cpu_attention.py: the CPU with attention dropout."""
        return not self.fused and not self.varlen

    @property
    def attended(self) -> int:
        """The positions attention pads the batch to (not the varlen kernel's: it pads none)."""
        return self.bucketed if self.hand_written else self.padded

    @property
    def scores(self) -> int:
        """Attention's probabilities: (B, heads, L, L), or by hand each bucket's."""
        if self.hand_written:
            return self.heads * self.bucketed_scores
        return self.batch * self.heads * self.length * self.length


def _shapes_for(
    arch: BertConfig, max_len: int, precision: str, batch: int, fill: float, device: str
) -> _Shapes:
    """A micro-batch of `batch` sequences of `max_len` with a real-token `fill` on `device`."""
    padded = batch * max_len
    # a training step packs its real tokens and MLM rows rounded up (model/attention.py)
    tokens = rounded_rows(math.ceil(fill * padded), padded)
    predicted = max(batch, round(MASK_RATE * fill * padded))  # >= 1 a sequence
    masked = rounded_rows(predicted, padded)
    grid = batch * (max_predictions(max_len) + 1)
    matmul = 2 if resolve_precision(precision, device) == "bf16" else 4
    dtype = torch.bfloat16 if matmul == 2 else torch.float32
    head_dim = arch.hidden_size // arch.num_heads
    varlen = why_not_varlen(torch.device(device), dtype, head_dim) is None
    position, square = expected_bucket(fill, max_len)
    return _Shapes(
        batch=batch,
        length=max_len,
        hidden=arch.hidden_size,
        ffn=arch.ffn_size,
        heads=arch.num_heads,
        vocab=arch.vocab_size,
        tokens=tokens,
        masked=masked,
        grid=grid,
        read=rounded_rows(predicted + batch, grid),
        matmul=matmul,
        head_norm=4 if device == "cuda" else matmul,
        mask=1 if arch.dropout > 0 else 0,
        logits_chunk=min(chunk_elements(device), masked * arch.vocab_size),
        fused=fused_attention(device, arch.dropout),
        varlen=varlen,
        bucketed=rounded_rows(math.ceil(position * padded), padded),
        bucketed_scores=rounded_rows(math.ceil(square * padded * max_len), padded * max_len),
    )


def fused_attention(device: str, dropout: float) -> bool:
    """Whether attention runs in SDPA's fused kernel, which keeps no (B, heads, L, L)
    scores: on CUDA, and on the CPU without dropout (with it, the CPU takes
    model/cpu_attention.py, which draws the dropout mask cheaply)."""
    return device == "cuda" or dropout == 0


def _attention_bytes(shapes: _Shapes) -> int:
    """What Layer.attention saves: on every position it pads the batch to, or with the varlen kernel
    only its fp32 (heads, T) logsumexp and the (B + 1,) int32 offsets (q, k and v are views
    of qkv's output and the kernel's output is attention_output's input, both counted in
    _layer_bytes)."""
    if shapes.varlen:
        return 4 * shapes.heads * shapes.tokens + 4 * (shapes.batch + 1)
    a, padded, h = shapes.matmul, shapes.attended, shapes.hidden
    qkv = 3 * a * padded * h  # q, k, v: SDPA's inputs, or matmul's contiguous copies of them
    if shapes.fused:  # SDPA also saves its output and its fp32 (B, heads, L) logsumexp
        return qkv + a * padded * h + 4 * shapes.batch * shapes.heads * shapes.length
    # model/cpu_attention.py saves the probabilities, and with dropout its bool mask and
    # the dropped probabilities (for `@ v`'s backward)
    probabilities = a * shapes.scores
    dropped = (shapes.mask + a) * shapes.scores if shapes.mask else 0
    return qkv + probabilities + dropped


def _qkv_saved_bytes(shapes: _Shapes) -> int:
    """qkv's (T, 3H) output, saved by SDPA's path (index_copy: backward's expand_as) and the
    varlen kernel's; model/cpu_attention.py keeps only its padded copy (_attention_bytes)."""
    return 0 if shapes.hand_written else 3 * shapes.matmul * shapes.tokens * shapes.hidden


def _layer_bytes(shapes: _Shapes) -> int:
    """What one Layer.forward saves: attention, and the rest on the T real tokens."""
    t, h, f, a = shapes.tokens, shapes.hidden, shapes.ffn, shapes.matmul
    return (
        a * t * h  # the layer's input, saved by qkv (a Linear saves its input)
        + _qkv_saved_bytes(shapes)
        + _attention_bytes(shapes)
        + a * t * h  # attention's (T, H) output, saved by attention_output
        + 2 * (4 * t * h + 8 * t)  # each LayerNorm's fp32 input (x + ...), its mean and rstd
        + a * t * h  # attention_LayerNorm's output, saved by intermediate
        + 2 * a * t * f  # intermediate's output, saved by GELU; GELU's, saved by output
        + 2 * shapes.mask * t * h  # the dropout masks after attention_output and output
    )


def _last_layer_bytes(shapes: _Shapes) -> int:
    """What the last Layer saves (model/queries.py): keys and values on every padded
    position, queries on the grid's slots, and the rest on the rows read."""
    t, h, f, a, r, g = (
        shapes.tokens,
        shapes.hidden,
        shapes.ffn,
        shapes.matmul,
        shapes.read,
        shapes.grid,
    )
    scores = g * shapes.heads * shapes.length  # (B, heads, M, L)
    # the key and value projections' (T, H) outputs, saved by index_copy_ (backward's
    # expand_as), and their scatter to (B, heads, L, d), which the matmuls save
    keys_values = 2 * a * t * h + 2 * a * shapes.padded * h
    if not shapes.fused:  # by hand (CPU, dropout): probabilities, bool mask, dropped ones
        attention = keys_values + a * g * h + (2 * a + shapes.mask) * scores
    else:  # SDPA: q, its output and fp32 logsumexp
        attention = keys_values + 2 * a * g * h + 4 * g * shapes.heads
    return (
        a * t * h  # the layer's input, saved by the key-value projection
        + a * g * h
        + 8 * g  # the grid's rows, saved by the query projection, and their index
        + attention
        + 8 * r  # the rows read, an index saved twice over (grid[take], a[take]) by one tensor
        + a * r * h  # attention's output at the rows read, saved by attention_output
        + 2 * (4 * r * h + 8 * r)  # each LayerNorm's fp32 input, mean and rstd
        + a * r * h  # attention_LayerNorm's output, saved by intermediate
        + 2 * a * r * f  # intermediate's output, saved by GELU; GELU's, saved by output
        + 2 * shapes.mask * r * h  # the dropout masks after attention_output and output
    )


def _embedding_bytes(shapes: _Shapes) -> int:
    """What Embeddings.forward and the packing save, on the T real tokens."""
    t, h = shapes.tokens, shapes.hidden
    return (
        3 * 8 * t  # int64 word, position and segment ids, saved by the three lookups
        + 4 * t * h  # the fp32 sum of the three, saved by LayerNorm
        + 8 * t  # LayerNorm's fp32 mean and rstd
        + shapes.mask * t * h  # the dropout mask after it
        + 8 * t  # Packing.index (int64), alive until backward ends
        + shapes.padded  # Packing.keep (bool, B x L)
    )


def _head_bytes(shapes: _Shapes) -> int:
    """What the MLM head saves on the P masked positions, and the NSP head on B <cls>."""
    p, h, a = shapes.masked, shapes.hidden, shapes.matmul
    return (
        2 * a * p * h  # mlm_dense's input, and its output saved by GELU
        + shapes.head_norm * p * h  # GELU's output, saved by mlm_LayerNorm
        + 8 * p  # mlm_LayerNorm's mean and rstd
        + a * p * h  # mlm_LayerNorm's output, saved by the decoder (the word embedding)
        + a * p * shapes.vocab  # the (P, V) logits, saved by cross_entropy_sum
        + (4 + 8 + 1) * p  # its fp32 logsumexp, int64 targets and bool "counted" per row
        + 3 * a * shapes.batch * h  # the pooler's input, tanh's output, the NSP Linear's input
    )


def _backward_peaks(shapes: _Shapes) -> tuple[int, int]:
    """Backward's own buffers, rough: (at the heads, inside one layer)."""
    # Backward starts at the MLM head: cross_entropy_sum makes the logits' (P, V) gradient
    # (and, in bf16, an fp32 chunk of them), and the decoder the word embedding's (V, H)
    # gradient.
    upcast = 4 * shapes.logits_chunk if shapes.matmul != 4 else 0
    backward = (
        shapes.matmul * shapes.masked * shapes.vocab + upcast + 4 * shapes.vocab * shapes.hidden
    )
    # ... and its forward upcasts a chunk, beside logsumexp's fp32 temporary of that size
    heads = max(backward, upcast + 4 * shapes.logits_chunk)
    # In a layer, about two gradients of its largest tensor are alive at once.
    largest = max(
        shapes.matmul * shapes.tokens * shapes.ffn,
        0 if shapes.varlen else shapes.matmul * shapes.attended * shapes.hidden,
        0 if shapes.fused else shapes.matmul * shapes.scores,
    )
    # Under bf16 the residual stream and its gradient stay fp32: beside the largest
    # tensor's gradient, an fp32 (T, H) gradient and an fp32 temporary of that size.
    layer = max(2 * largest, largest + 2 * 4 * shapes.tokens * shapes.hidden)
    if shapes.hand_written:
        # model/cpu_attention.py's backward makes q, k and v's gradients at every position
        # of its buckets and two buffers of scores, once the feed-forward half of the
        # layer has run its backward and freed what it saved
        a, t, h = shapes.matmul, shapes.tokens, shapes.hidden
        attention = 3 * a * shapes.attended * h + 2 * a * shapes.scores
        feed_forward = a * t * h + 2 * a * t * shapes.ffn + shapes.mask * t * h + 4 * t * h
        layer = max(layer, attention - feed_forward)
    return heads, layer


def activation_bytes(
    arch: BertConfig,
    max_len: int,
    precision: str,
    batch: int,
    fill: float,
    device: str,
    checkpointing: bool,
) -> dict[str, int]:
    """What one training micro-batch of BertForPretraining.losses saves for backward, in
    named parts, on top of weights, gradients and optimizer state. `precision` is
    speed.precision's, `max_len` data.max_len's.

    Under bf16 autocast matmul outputs are bf16 and each Linear saves a bf16 copy of its
    input, while the residual stream (the LayerNorm inputs) stays fp32; LayerNorm and
    softmax keep their input's dtype on the CPU and run in fp32 on CUDA.
    """
    shapes = _shapes_for(arch, max_len, precision, batch, fill, device)
    layer, last, heads = _layer_bytes(shapes), _last_layer_bytes(shapes), _head_bytes(shapes)
    whole = arch.num_layers - 1  # layers on every token; the last one on the rows read
    heads_peak, layer_peak = _backward_peaks(shapes)
    parts = {"embeddings": _embedding_bytes(shapes)}
    if checkpointing:
        # torch.utils.checkpoint keeps each layer's fp32 input; backward recomputes one layer
        # at a time, after the heads' backward has freed what the heads saved.
        # Under checkpointing every layer runs whole (model/bert.py: encode_packed).
        layers, layer_input = arch.num_layers, 4 * shapes.tokens * shapes.hidden
        parts[f"layer inputs: {layers} x {format_size(layer_input)}"] = layers * layer_input
        if heads + heads_peak > layer + layer_peak:
            parts["MLM and NSP heads, and their backward (rough)"] = heads + heads_peak
        else:
            parts["one layer recomputed, and its backward (rough)"] = layer + layer_peak
    else:
        if whole:
            parts[f"layers: {whole} x {format_size(layer)}"] = whole * layer
        parts["the last layer, on the rows the losses read"] = last
        parts["MLM and NSP heads"] = heads
        parts["backward buffers (rough)"] = max(heads_peak, layer_peak)
    return parts
