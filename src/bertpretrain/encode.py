"""Text -> contextual vectors from a pretrained checkpoint: `bertpretrain encode` and its API.

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

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertpretrain import files
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import CLS, CLS_ID, PAD_ID, SEP, SEP_ID, UNK
from bertpretrain.device import pick_device
from bertpretrain.errors import ArgumentParser, UserError
from bertpretrain.evaluate import COLLAPSED
from bertpretrain.load import MIN_LEN, load_model
from bertpretrain.model import BertModel

SHOWN = 6  # vector elements the text output shows per row


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


# ---------------------------------------------------------------------------------------
# The command line: `bertpretrain encode ...`

EPILOG = """\
examples:
  bertpretrain encode "a crane is flying"                  # the newest run's checkpoint
  bertpretrain encode "a crane driver came" "he just left"  # a sentence pair
  bertpretrain encode "a crane is flying" --token crane     # one token's vector
  bertpretrain encode "a crane is flying" --checkpoint outputs/2026-11-24/10-00-00 --format json
  bertpretrain encode --file sentences.txt --output vectors.npz

--format json prints one JSON document per input (one per line with --file) with the keys
tokens, words, segments, shape, vectors (one row per token) and cls (row 0); with --token,
vectors holds that token's rows and positions says where they are. --output writes .npy
(vectors (N, L, H), zero-padded) or .npz (vectors, lengths, cls, tokens, words, segments).
"""


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bertpretrain encode",
        description="Contextual vectors of a sentence or a sentence pair from a checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("text", nargs="*", metavar="TEXT", help="a sentence, or two for a pair")
    p.add_argument(
        "--file", help="one input per line, a tab between the sentences of a pair; - for stdin"
    )
    p.add_argument("--token", metavar="WORD", help="print this word's vector (every occurrence)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="default: text")
    p.add_argument("--output", metavar="FILE", help="write the vectors to a .npy or .npz file")
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a checkpoint file or a run dir (its newest checkpoint); default: outputs/latest, "
        "else the newest outputs/**/checkpoints/step_*.pt",
    )
    p.add_argument(
        "--device", default="cpu", metavar="NAME", help="cpu (default), cuda, cuda:N, mps"
    )
    p.add_argument(
        "--max-len",
        type=int,
        metavar="N",
        help="length limit in tokens, <cls>/<sep> included; default and most: the checkpoint's "
        "training max_len",
    )
    p.add_argument(
        "--truncate", action="store_true", help="cut the longest sentence until the input fits"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="inputs per batch (default: 64)"
    )
    return p


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    inputs = _inputs(args)
    _check_options(args)
    enc = Encoder.load(args.checkpoint, args.device, args.max_len)
    if enc.collapsed:
        print(
            f"bertpretrain: warning: {enc.source} was recorded as collapsed (validation token "
            f"spread {enc.val_metrics['token_spread']:.1g} at step "
            f"{enc.val_metrics.get('step', '?')}): every token gets almost the same vector, "
            "whatever its context; train it with warmup (the default optim) or longer",
            file=sys.stderr,
        )
    if args.file is None:
        encodings = [enc.encode(*inputs[0], truncate=args.truncate)]
    else:
        try:
            encodings = enc.encode_batch(inputs, args.batch_size, truncate=args.truncate)
        except UserError as e:
            raise UserError(f"--file {args.file}: {e}") from None
    if args.output:
        shapes = save_vectors(Path(args.output), encodings)
        print(f"wrote {args.output}: {', '.join(f'{k} {v}' for k, v in shapes.items())}")
    elif args.token is not None:
        _print_token(args.token, encodings[0], args.format, enc.tokenizer.lowercase)
    elif args.format == "json":
        for e in encodings:
            print(json.dumps(_document(e, enc)))
    else:
        _print_text(encodings, enc)


def _inputs(args: argparse.Namespace) -> list[list[str]]:
    if args.file is not None:
        if args.text:
            raise UserError("give either text or --file, not both")
        return read_inputs(args.file)
    if not args.text:
        raise UserError(
            'no text to encode; give a sentence, e.g. bertpretrain encode "a crane is flying"'
        )
    if len(args.text) > 2:
        raise UserError(
            f"got {len(args.text)} sentences; give one sentence or a pair of two "
            '(quote each sentence, e.g. "a crane driver came" "he just left")'
        )
    return [args.text]


def _check_options(args: argparse.Namespace) -> None:
    """Mistakes found before the checkpoint is read, so they fail fast."""
    if args.output and Path(args.output).suffix.lower() not in (".npy", ".npz"):
        raise UserError(
            f"--output {args.output} has an unknown suffix; use .npy (the vectors) or .npz "
            "(vectors, lengths, cls, tokens)"
        )
    if args.token is not None and (args.file is not None or args.output):
        raise UserError("--token prints one input's vectors; drop --file and --output")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")


def read_inputs(path: str) -> list[list[str]]:
    """One input per line, a tab between the sentences of a pair; trailing blank lines ignored."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"--file {path} does not exist; give a text file with one input per line"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"--file {path} cannot be read ({type(e).__name__}: {str(e)[:100]}); "
            "give a UTF-8 text file with one input per line"
        ) from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"--file {path} is empty; put one input per line")
    inputs = []
    for n, line in enumerate(lines, 1):
        parts = line.split("\t")
        if not line.strip():
            raise UserError(f"--file {path}: line {n} is empty; remove blank lines")
        if len(parts) > 2:
            raise UserError(
                f"--file {path}: line {n} has {len(parts)} tab-separated sentences; "
                "give one sentence or a pair of two per line"
            )
        inputs.append(parts)
    return inputs


def _shown(token: str, word: str) -> str:
    """The token as the model saw it: a word piece as is (`##ably`), an out-of-vocabulary
    word marked `word→<unk>`."""
    if token != UNK or word == UNK:
        return token
    arrow = "→" if "utf" in (sys.stdout.encoding or "").lower() else "->"
    return f"{word}{arrow}{token}"


def _numbers(values: torch.Tensor, limit: int | None = None) -> str:
    shown = values.tolist()[:limit]
    more = " ..." if limit is not None and len(values) > limit else ""
    return " ".join(f"{v:+.4f}" for v in shown) + more


def _shape(e: Encoding) -> tuple[int, int, int]:
    return (1, *e.vectors.shape)  # (inputs, tokens, hidden units)


def _text_block(e: Encoding) -> list[str]:
    h = e.vectors.shape[1]
    cut = f"  ({e.truncated} tokens cut by --truncate)" if e.truncated else ""
    lines = [
        "tokens     " + " ".join(_shown(t, w) for t, w in zip(e.tokens, e.words)) + cut,
        "segments   " + " ".join(map(str, e.segments)),
        f"shape      {_shape(e)}  (inputs, tokens, hidden units)",
        f"<cls>      {_numbers(e.cls, SHOWN)}  (the whole input; first {SHOWN} of {h})",
        "",
        f"  #  {'token':<20} seg  vector (first {SHOWN} of {h})",
    ]
    for i, (t, w, s) in enumerate(zip(e.tokens, e.words, e.segments)):
        lines.append(f"{i:>3}  {_shown(t, w):<20} {s:>3}  {_numbers(e.vectors[i], SHOWN)}")
    return lines


def _print_text(encodings: list[Encoding], enc: Encoder) -> None:
    trained = f"step {enc.step}" if enc.step is not None else "a transformers folder"
    print(f"checkpoint {enc.source} ({trained})")
    for i, e in enumerate(encodings):
        print()
        if len(encodings) > 1:
            print(f"input {i + 1}")
        print("\n".join(_text_block(e)))


def _document(e: Encoding, enc: Encoder) -> dict:
    return {
        "checkpoint": str(enc.source),
        "tokens": e.tokens,
        "words": e.words,
        "segments": e.segments,
        "shape": list(_shape(e)),
        "vectors": e.vectors.tolist(),
        "cls": e.cls.tolist(),
    }


def _print_token(token: str, e: Encoding, fmt: str, lowercase: bool) -> None:
    word = token.lower() if lowercase else token  # as the text was
    positions = [i for i, w in enumerate(e.words) if w == word]  # all pieces of the word
    if not positions:
        words = " ".join(w for w in dict.fromkeys(e.words) if w not in (CLS, SEP))
        raise UserError(f"--token {token!r} is not in the input; its words are: {words}")
    if fmt == "json":
        doc = {"token": word, "positions": positions, "tokens": e.tokens, "words": e.words}
        doc |= {"segments": e.segments, "shape": list(_shape(e))}
        print(json.dumps(doc | {"vectors": [e.vectors[i].tolist() for i in positions]}))
        return
    for i in positions:
        row = e.vectors[i]
        print(
            f"{_shown(e.tokens[i], word)} at position {i} (segment {e.segments[i]}), {len(row)} values:"
        )
        for start in range(0, len(row), 8):
            print("  " + _numbers(row[start : start + 8]))


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
