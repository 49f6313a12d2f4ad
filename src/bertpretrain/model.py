"""BERT as in Devlin et al. (2019) and transformers' modeling_bert: post-LN encoder, GELU,
learned positions, segment embeddings, pooler, tied MLM decoder and an NSP head.

Parameter names follow transformers where they can, so export is a rename: the one
difference is the fused query/key/value projection (`qkv`), split apart on export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BertConfig:
    vocab_size: int
    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 2
    ffn_size: int = 256
    dropout: float = 0.1
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def to_dict(self) -> dict:
        return asdict(self)


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = (
            self.word_embeddings(tokens)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(segments)
        )
        return self.dropout(self.LayerNorm(x))  # (B, L, H)


class Layer(nn.Module):
    """One post-LN Transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.dropout_p = c.dropout
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.attention_output = nn.Linear(c.hidden_size, c.hidden_size)
        self.attention_LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.intermediate = nn.Linear(c.hidden_size, c.ffn_size)
        self.output = nn.Linear(c.ffn_size, c.hidden_size)
        self.output_LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, h // self.num_heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=keep,  # (B, 1, 1, L): True where the key is a real token
            dropout_p=self.dropout_p if self.training else 0.0,
        )  # (B, heads, L, H/heads)
        a = a.transpose(1, 2).reshape(b, n, h)
        x = self.attention_LayerNorm(x + self.dropout(self.attention_output(a)))
        f = self.output(F.gelu(self.intermediate(x)))
        return self.output_LayerNorm(x + self.dropout(f))


class BertModel(nn.Module):
    """Embeddings, encoder and pooler: text in, contextual vectors out."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_layers))
        self.pooler = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, tokens, segments, valid_lens) -> torch.Tensor:
        keep = torch.arange(tokens.shape[1], device=tokens.device) < valid_lens[:, None]
        keep = keep[:, None, None, :]  # (B, 1, 1, L), built once for every layer
        x = self.embeddings(tokens, segments)
        for layer in self.layer:
            x = layer(x, keep)
        return x  # (B, L, H)

    def pool(self, encoded: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler(encoded[:, 0]))  # (B, H): the <cls> vector, pooled


class BertForPretraining(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.bert = BertModel(c)
        self.mlm_dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.mlm_LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.nsp = nn.Linear(c.hidden_size, 2)
        self.apply(_init_weights)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the given hidden vectors; the decoder is the word embedding."""
        h = self.mlm_LayerNorm(F.gelu(self.mlm_dense(hidden)))
        return F.linear(h, self.bert.embeddings.word_embeddings.weight, self.mlm_bias)

    def forward(self, tokens, segments, valid_lens, pred_positions):
        """Encoded sequence, MLM logits at every prediction slot, and NSP logits."""
        encoded = self.bert(tokens, segments, valid_lens)
        picked = encoded.gather(
            1, pred_positions[..., None].expand(-1, -1, encoded.shape[-1])
        )  # (B, P, H)
        return encoded, self.mlm_logits(picked), self.nsp(self.bert.pool(encoded))

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM cross-entropy averaged over the real masked positions only, and NSP loss.

        The MLM head runs only where weight is 1: padded prediction slots cost nothing and
        cannot leak into the loss.
        """
        encoded = self.bert(batch["tokens"], batch["segments"], batch["valid_lens"])
        real = batch["pred_weights"] > 0  # (B, P)
        rows = torch.arange(encoded.shape[0], device=encoded.device)[:, None].expand_as(real)
        picked = encoded[rows[real], batch["pred_positions"][real]]  # (M, H)
        mlm = F.cross_entropy(self.mlm_logits(picked).float(), batch["pred_labels"][real])
        nsp = F.cross_entropy(self.nsp(self.bert.pool(encoded)).float(), batch["nsp_labels"])
        return mlm, nsp


def _init_weights(module: nn.Module) -> None:
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


def flops_per_sequence(c: BertConfig, seq_len: int, predictions: float) -> float:
    """Training FLOPs of one padded sequence (forward + backward = 3x the forward matmuls)."""
    h, f = c.hidden_size, c.ffn_size
    per_token = c.num_layers * (2 * 3 * h * h + 2 * h * h + 2 * 2 * h * f)
    attention = c.num_layers * 2 * 2 * seq_len * seq_len * h
    head = predictions * (2 * h * h + 2 * h * c.vocab_size)
    return 3 * (seq_len * per_token + attention + head + 2 * h * h + 2 * h * 2)


def describe(c: BertConfig, params: int) -> str:
    return (
        f"{c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, FFN {c.ffn_size}, "
        f"vocab {c.vocab_size}: {params / 1e6:.2f}M parameters"
    )
