"""BERT with a classifier on the pooled `<cls>`, for `finetune`: as transformers'
BertForSequenceClassification (the pooler, dropout, one linear layer), with one output
for a regression task such as STS-B.

The encoder works on the packed real tokens as in pretraining: a batch's padding costs
nothing outside attention, and the last layer runs on the `<cls>` rows alone
(model/queries.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertpretrain.model.attention import dropout, pack
from bertpretrain.model.bert import BertConfig, BertModel, initialise
from bertpretrain.model.queries import cls_queries


class BertForClassification(nn.Module):
    def __init__(self, config: BertConfig, num_labels: int):
        """`num_labels` classes, or 1: a regression (one score per input)."""
        super().__init__()
        self.config, self.num_labels = config, num_labels
        self.bert = BertModel(config)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.apply(initialise)

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def forward(self, tokens, segments, valid_lens) -> torch.Tensor:
        """(B, num_labels) logits, or (B,) scores for a regression."""
        packing = pack(valid_lens, tokens.shape[1], round_rows=True)
        starts = torch.cumsum(valid_lens, 0) - valid_lens  # packed row of each <cls>
        # (B, H): the last layer runs on the <cls> rows alone, all the classifier reads
        cls = self.bert.encode_packed(tokens, segments, packing, cls_queries(starts))
        pooled = dropout(self.bert.pool(cls), self.config.dropout, self.training)
        logits = self.classifier(pooled).float()
        return logits.squeeze(-1) if self.regression else logits

    def loss(self, batch: dict, count: torch.Tensor | float | None = None) -> torch.Tensor:
        """Cross-entropy (or squared error for a regression) summed over the batch and
        divided by `count`, the global batch's size: micro-batch and rank losses then add
        up to the global batch's mean exactly."""
        out = self(batch["tokens"], batch["segments"], batch["valid_lens"])
        labels = batch["labels"]
        if self.regression:
            total = F.mse_loss(out, labels.float(), reduction="sum")
        else:
            total = F.cross_entropy(out, labels, reduction="sum")
        return total / (len(labels) if count is None else count)


class ClassifierLoss(nn.Module):
    """The loss as a forward() returning a tuple of one, as training_step takes it (and as
    DistributedDataParallel needs: it syncs what goes through the wrapped forward)."""

    def __init__(self, model: BertForClassification):
        super().__init__()
        self.model = model

    def forward(self, batch, count=None):
        return (self.model.loss(batch, count),)
