"""BERT as in Devlin et al. (2019) and transformers' modeling_bert: post-LN encoder, GELU,
learned positions, segment embeddings, pooler, tied MLM decoder and an NSP head.

Parameter names follow transformers where they can, so export is a rename: the one
difference is the fused query/key/value projection (`qkv`), split apart on export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from bertpretrain.model.architecture import ACTIVATIONS, BertConfig
from bertpretrain.model.attention import (
    Packing,
    dropout,
    pack,
    padded_attention,
    rounded_rows,
    varlen_attention,
    varlen_kernel,
)
from bertpretrain.model.cpu_attention import cpu_attention
from bertpretrain.model.cross_entropy import IGNORED, cross_entropy_sum
from bertpretrain.model.queries import Queries, pretraining_queries, query_attention, rows_of

__all__ = ["ACTIVATIONS", "BertConfig"]  # where Python users have always found them


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.dropout

    def forward(
        self, tokens: torch.Tensor, segments: torch.Tensor, packing: Packing
    ) -> torch.Tensor:
        """Embeddings of the real tokens only: (T, H)."""
        i = packing.index
        x = (
            self.word_embeddings(tokens.flatten()[i])
            + self.position_embeddings(i % packing.length)
            + self.token_type_embeddings(segments.flatten()[i])
        )
        return dropout(self.LayerNorm(x), self.dropout_p, self.training, packing.real)


class Layer(nn.Module):
    """One post-LN Transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout_p = config.dropout
        self.approximate = ACTIVATIONS[config.hidden_act]
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.ffn_size)
        self.output = nn.Linear(config.ffn_size, config.hidden_size)
        self.output_LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def attention(self, qkv: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Multi-head self-attention of packed (T, 3H) projections; padded keys are ignored.
        The variable-length kernel where it runs (model/attention.py); on the CPU with
        attention dropout, model/cpu_attention.py (sequences bucketed by length); else SDPA
        on the batch padded back to (B, heads, L, d)."""
        p = self.dropout_p if self.training else 0.0
        kernel = varlen_kernel(qkv.device, qkv.dtype, qkv.shape[-1] // 3 // self.num_heads)
        if kernel is not None:
            return varlen_attention(qkv, packing, self.num_heads, kernel, p)
        if p and qkv.device.type == "cpu":  # SDPA would draw its dropout mask the slow way
            return cpu_attention(qkv, packing, self.num_heads, p)
        return padded_attention(qkv, packing, self.num_heads, p)

    def forward(
        self, x: torch.Tensor, packing: Packing, queries: Queries | None = None
    ) -> torch.Tensor:
        """The layer's (rows, H) output; with `queries`, only at the rows they name
        (model/queries.py), in their order."""
        if queries is not None:
            return self._forward_queries(x, packing, queries)
        return self._after_attention(x, self.attention(self.qkv(x), packing), packing.real)

    def _forward_queries(self, x: torch.Tensor, packing: Packing, queries: Queries):
        h = x.shape[-1]
        weight, bias = self.qkv.weight, self.qkv.bias  # rows: query, then key and value
        grid = x[queries.grid]
        q = F.linear(grid, weight[:h], bias[:h])
        p = self.dropout_p if self.training else 0.0
        kernel = varlen_kernel(x.device, q.dtype, h // self.num_heads)
        if kernel is not None and not kernel.dropout:
            p = 0.0  # as the other layers on a kernel without dropout (attention_path's log)
        k = F.linear(x, weight[h : 2 * h], bias[h : 2 * h])
        v = F.linear(x, weight[2 * h :], bias[2 * h :])  # apart: each scattered on its own
        a = query_attention(q, k, v, packing, self.num_heads, p)
        if queries.take is not None:
            grid, a = grid[queries.take], a[queries.take]
        return self._after_attention(grid, a, queries.real)

    def _after_attention(self, x: torch.Tensor, a: torch.Tensor, real: int) -> torch.Tensor:
        """x = LN(x + attention's output); x = LN(x + ffn(x)), dropout drawn for the first
        `real` rows only."""
        p, training = self.dropout_p, self.training
        x = self.attention_LayerNorm(x + dropout(self.attention_output(a), p, training, real))
        f = self.output(F.gelu(self.intermediate(x), approximate=self.approximate))
        return self.output_LayerNorm(x + dropout(f, p, training, real))


class BertModel(nn.Module):
    """Embeddings, encoder and pooler: text in, contextual vectors out."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.gradient_checkpointing = False  # a memory/speed trade, not part of the model

    def encode_packed(
        self, tokens, segments, packing: Packing, queries: Queries | None = None
    ) -> torch.Tensor:
        """The packed (rows, H) encoding; with `queries`, the last layer's output only at
        the rows a loss reads (model/queries.py)."""
        x = self.embeddings(tokens, segments, packing)
        if self.gradient_checkpointing and self.training:
            # Keep only each layer's input; recompute the rest in backward, with the same
            # dropout masks (the RNG state is replayed). Every layer runs whole here: the
            # memory plan's recompute model (memory/activations.py) is of whole layers.
            for layer in self.layer:
                x = torch.utils.checkpoint.checkpoint(layer, x, packing, use_reentrant=False)
            return x if queries is None else rows_of(x, queries)
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            x = layer(x, packing, queries if i == last else None)
        return x

    def forward(self, tokens, segments, valid_lens) -> torch.Tensor:
        """Contextual vectors (B, L, H); zeros at padded positions."""
        b, n = tokens.shape
        packing = pack(valid_lens, n)
        x = self.encode_packed(tokens, segments, packing)
        return x.new_zeros(b * n, x.shape[-1]).index_copy(0, packing.index, x).view(b, n, -1)

    def pool(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler(cls))  # (B, H): the pooled <cls> vectors


class BertForPretraining(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm_dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.mlm_LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.apply(initialise)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the given hidden vectors; the decoder is the word embedding."""
        approximate = ACTIVATIONS[self.bert.config.hidden_act]
        h = self.mlm_LayerNorm(F.gelu(self.mlm_dense(hidden), approximate=approximate))
        return F.linear(h, self.bert.embeddings.word_embeddings.weight, self.mlm_bias)

    def forward(self, tokens, segments, valid_lens, pred_positions):
        """Encoded sequence, MLM logits at every prediction slot, and NSP logits."""
        encoded = self.bert(tokens, segments, valid_lens)
        picked = encoded.gather(
            1, pred_positions[..., None].expand(-1, -1, encoded.shape[-1])
        )  # (B, P, H)
        return encoded, self.mlm_logits(picked), self.nsp(self.bert.pool(encoded[:, 0]))

    def losses(
        self,
        batch: dict[str, torch.Tensor],
        mlm_count: torch.Tensor | float | None = None,
        nsp_count: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM cross-entropy averaged over the real masked positions only, and NSP loss.

        Works on the packed tokens throughout, runs the last layer only at the rows the
        losses read (model/queries.py), and the MLM head only where the prediction weight
        is 1: padded slots cost nothing and cannot leak into the loss.
        The packed tokens and the MLM rows are rounded up to one of a few sizes
        (`attention.rounded_rows`); the extra rows are ignored by both losses. A
        micro-batch of a larger batch passes the larger batch's counts, so the summed
        micro-batch losses equal the whole batch's mean exactly.
        """
        tokens, valid_lens = batch["tokens"], batch["valid_lens"]
        packing = pack(valid_lens, tokens.shape[1], round_rows=True)
        starts = torch.cumsum(valid_lens, 0) - valid_lens  # packed row of each <cls>
        real = batch["pred_weights"] > 0  # (B, P)
        queries, masked = pretraining_queries(starts, batch["pred_positions"], real)
        # (rows, H): the last layer at the masked positions, then at each <cls>, then padding
        x = self.bert.encode_packed(tokens, batch["segments"], packing, queries)
        labels = batch["pred_labels"][real]
        padding = rounded_rows(masked, real.numel()) - masked
        hidden = F.pad(x[:masked], (0, 0, 0, padding))  # extra rows are zeros ...
        labels = F.pad(labels, (0, padding), value=IGNORED)  # ... and count for nothing
        mlm = cross_entropy_sum(self.mlm_logits(hidden), labels)
        nsp_logits = self.nsp(self.bert.pool(x[masked : masked + len(starts)])).float()
        nsp = F.cross_entropy(nsp_logits, batch["nsp_labels"], reduction="sum")
        mlm_count = real.sum() if mlm_count is None else mlm_count
        nsp_count = len(valid_lens) if nsp_count is None else nsp_count
        return mlm / mlm_count, nsp / nsp_count


def initialise(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def flops_per_sequence(config: BertConfig, seq_len: int, predictions: float) -> float:
    """Training FLOPs of one padded sequence (forward + backward = 3x the forward matmuls)."""
    h, f = config.hidden_size, config.ffn_size
    per_token = config.num_layers * (2 * 3 * h * h + 2 * h * h + 2 * 2 * h * f)
    attention = config.num_layers * 2 * 2 * seq_len * seq_len * h
    head = predictions * (2 * h * h + 2 * h * config.vocab_size)
    return 3 * (seq_len * per_token + attention + head + 2 * h * h + 2 * h * 2)


def describe(config: BertConfig, params: int) -> str:
    return (
        f"{config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, FFN {config.ffn_size}, "
        f"vocab {config.vocab_size}: {params / 1e6:.2f}M parameters"
    )
