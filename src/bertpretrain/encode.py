"""Text -> contextual vectors from a pretrained model: the API behind `bertpretrain encode`
(whose options and printing are in commands/encode.py).

Text is processed exactly as in training, by the checkpoint's own tokenizer (a word-level
vocabulary: lower-cased, split on whitespace, a word outside it is `<unk>`; or WordPiece:
a word may become several pieces, e.g. `unbelievably` -> `unb ##el ##ie ##v ##ably`) and
wrapped as `<cls> a <sep>` or `<cls> a <sep> b <sep>`, with segment 0 for `<cls> a <sep>`
and 1 for `b <sep>`. The model runs in eval mode without gradients, so the same input
always gives the same vectors.

    from bertpretrain.encode import Encoder

    enc = Encoder.load("outputs/latest")  # a run dir, a .pt file or a transformers folder
    out = enc.encode("a crane is flying")
    out.tokens  # ['<cls>', 'a', 'crane', 'is', 'flying', '<sep>']
    out.vectors.shape  # torch.Size([6, 128]): one row per token, float32 on the CPU
    out.cls  # out.vectors[0]: the whole input's representation
    pair = enc.encode("a crane driver came", "he just left")
    pair.segments  # [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    many = enc.encode_batch(["a crane is flying", ("a crane driver came", "he just left")])

`Encoder.load()` without a path takes the newest run's checkpoint under ./outputs, as the
command does. Padding in `encode_batch` never changes a real token's vector: attention
skips padded positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertpretrain import files
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import CLS, CLS_ID, PAD_ID, SEP, SEP_ID
from bertpretrain.device import pick_device
from bertpretrain.errors import UserError
from bertpretrain.load import MIN_LEN, load_model
from bertpretrain.model.bert import BertModel
from bertpretrain.training.evaluate import COLLAPSED


@dataclass
class Encoding:
    """One input's contextual vectors: one row per token, `<cls>` and `<sep>` included."""

    words: list[str]  # per token, the word it comes from (lower-cased), with <cls>/<sep>
    tokens: list[str]  # what the model saw: a word piece, or <unk> outside the vocabulary
    segments: list[int]  # 0 for <cls> a <sep>, 1 for b <sep>
    vectors: torch.Tensor  # (L, H) float32 on the CPU
    truncated: int = 0  # tokens cut to fit the length limit (truncate=True)

    @property
    def cls(self) -> torch.Tensor:
        return self.vectors[0]  # (H,)


@dataclass
class _Prepared:
    words: list[str]
    ids: list[int]
    segments: list[int]
    truncated: int


class Encoder:
    """A checkpoint's encoder (the pretraining heads dropped) and tokenizer: load once,
    encode many."""

    def __init__(
        self,
        model: BertModel,
        tokenizer: Tokenizer,
        max_len: int,
        device: torch.device,
        source: Path | None = None,
        step: int | None = None,
        trained_len: int | None = None,
        val_metrics: dict | None = None,
    ):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.vocab = tokenizer.vocab
        self.max_len = max_len
        self.trained_len = trained_len or max_len
        self.device = device
        self.source = source
        self.step = step
        self.val_metrics = val_metrics or {}  # the training run's last validation

    @property
    def collapsed(self) -> bool:
        """Whether training recorded that every token gets almost the same vector."""
        spread = self.val_metrics.get("token_spread")
        return spread is not None and spread < COLLAPSED

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        max_len: int | None = None,
    ) -> Encoder:
        """From a checkpoint file, a run dir or a published transformers BERT folder; None =
        the newest run under ./outputs.

        `max_len` may lower the length limit below the checkpoint's training max_len.
        """
        target = pick_device(device, "--device")
        loaded = load_model(path)
        return cls(
            loaded.model.bert,  # the heads are not needed to encode
            loaded.tokenizer,
            _limit(max_len, loaded.max_len),
            target,
            loaded.source,
            loaded.step,
            loaded.max_len,
            loaded.val_metrics,
        )

    def encode(self, a: str, b: str | None = None, *, truncate: bool = False) -> Encoding:
        """Sentence `a`, or the pair (a, b)."""
        sentences = [a] if b is None else [a, b]
        return self._run([self._prepare(sentences, truncate, "the text")])[0]

    def encode_batch(
        self, inputs: Sequence[str | Sequence[str]], batch_size: int = 64, *, truncate: bool = False
    ) -> list[Encoding]:
        """Each input is a sentence or a (a, b) pair; `batch_size` inputs run at a time."""
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} must be at least 1")
        prepared = [
            self._prepare([x] if isinstance(x, str) else list(x), truncate, f"input {i + 1}")
            for i, x in enumerate(inputs)
        ]
        out: list[Encoding] = []
        for start in range(0, len(prepared), batch_size):
            out += self._run(prepared[start : start + batch_size])
        return out

    def _prepare(self, sentences: list[str], truncate: bool, where: str) -> _Prepared:
        split = self._split(sentences, where)
        cut = self._fit(split, truncate, where)
        words, ids, segments = _wrap(split)
        return _Prepared(words, ids, segments, cut)

    def _split(self, sentences: list[str], where: str) -> list[list[tuple[str, int]]]:
        """Each sentence's (word, token id) pairs, as training tokenised the corpus."""
        if not 1 <= len(sentences) <= 2:
            raise UserError(
                f"{where} has {len(sentences)} sentences; give one sentence or a pair of two"
            )
        split = [self.tokenizer.split(s) for s in sentences]
        for i, tokens in enumerate(split):
            if not tokens:
                raise UserError(f"{where}: sentence {i + 1} is empty; give at least one word")
        return split

    def _fit(self, split: list[list[tuple[str, int]]], truncate: bool, where: str) -> int:
        """Cut tokens off the end of the longer sentence (b on a tie, as BERT does) until the
        input fits; returns how many were cut."""
        length = sum(map(len, split)) + len(split) + 1  # <cls> and one <sep> per sentence
        over = length - self.max_len
        if over > 0 and not truncate:
            raise UserError(
                f"{where} is {length} tokens long with <cls> and <sep>; the limit is "
                f"{self.max_len} ({self._limit_source()}); shorten it or pass --truncate "
                "(truncate=True) to cut the longest sentence"
            )
        for _ in range(over):
            max(reversed(split), key=len).pop()
        return max(0, over)

    def _limit_source(self) -> str:
        if self.max_len == self.trained_len:
            return "the checkpoint's training max_len"
        return f"--max-len; the checkpoint was trained with {self.trained_len}"

    def _run(self, batch: list[_Prepared]) -> list[Encoding]:
        lens = [len(p.ids) for p in batch]
        tokens = torch.full((len(batch), max(lens)), PAD_ID, dtype=torch.long)  # (B, L)
        segments = torch.zeros_like(tokens)
        for row, p in enumerate(batch):
            tokens[row, : lens[row]] = torch.tensor(p.ids)
            segments[row, : lens[row]] = torch.tensor(p.segments)
        valid_lens = torch.tensor(lens)
        with torch.inference_mode():
            encoded = self.model(
                tokens.to(self.device), segments.to(self.device), valid_lens.to(self.device)
            )
            encoded = encoded.float().cpu()  # (B, L, H)
        # Cloned outside inference mode: callers get ordinary tensors they can use anywhere.
        return [
            Encoding(
                p.words,
                [self.vocab[i] for i in p.ids],
                p.segments,
                encoded[row, :n].clone(),
                p.truncated,
            )
            for row, (p, n) in enumerate(zip(batch, lens))
        ]


def _wrap(split: list[list[tuple[str, int]]]) -> tuple[list[str], list[int], list[int]]:
    """Words, ids and segments of `<cls> a <sep>` in segment 0, then `b <sep>` in segment 1."""
    words, ids, segments = [CLS], [CLS_ID], [0]
    for segment, sentence in enumerate(split):
        words += [w for w, _ in sentence] + [SEP]
        ids += [i for _, i in sentence] + [SEP_ID]
        segments += [segment] * (len(sentence) + 1)
    return words, ids, segments


def _limit(max_len: int | None, trained: int) -> int:
    """Positions past the training max_len were never trained, so the limit can only go down."""
    if max_len is None:
        return trained
    if not MIN_LEN <= max_len <= trained:
        raise UserError(
            f"--max-len {max_len} is out of range: use {MIN_LEN} to {trained} "
            "(the checkpoint's training max_len)"
        )
    return max_len


def save_vectors(path: Path, encodings: list[Encoding]) -> dict[str, tuple[int, ...]]:
    """Write the vectors as .npy (vectors (N, L, H), zero-padded) or .npz (with lengths,
    cls, tokens, words, segments). The file is replaced whole or not at all: a full disk
    keeps the previous one. Returns each array's shape."""
    lengths = np.array([len(e.tokens) for e in encodings])
    n, width, hidden = len(encodings), int(lengths.max()), encodings[0].vectors.shape[1]
    vectors = np.zeros((n, width, hidden), dtype=np.float32)  # (N, L, H), zero past lengths
    for row, e in enumerate(encodings):
        vectors[row, : lengths[row]] = e.vectors.numpy()
    arrays = {"vectors": vectors}
    npz = path.suffix.lower() == ".npz"
    if npz:
        arrays |= {
            "lengths": lengths,
            "cls": vectors[:, 0],  # (N, H)
            "tokens": _padded([e.tokens for e in encodings], width),
            "words": _padded([e.words for e in encodings], width),
            "segments": np.array([e.segments + [0] * (width - len(e.segments)) for e in encodings]),
        }
    try:  # a file object: numpy adds no suffix of its own
        files.atomic_write(path, lambda f: np.savez(f, **arrays) if npz else np.save(f, vectors))
    except OSError as e:
        raise UserError(
            f"cannot write --output {path}: {files.failure(e, path.parent)}; check the folder "
            "exists and has space (an earlier file there is unchanged)"
        ) from None
    return {k: v.shape for k, v in arrays.items()}


def _padded(rows: list[list[str]], width: int) -> np.ndarray:
    return np.array([r + [""] * (width - len(r)) for r in rows], dtype=str)  # (N, L)
