"""`bertpretrain encode ...`: the options, the input file and the printing around
`bertpretrain.encode.Encoder`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bertpretrain.data.vocab import CLS, SEP, UNK
from bertpretrain.encode import Encoder, Encoding, save_vectors
from bertpretrain.errors import ArgumentParser, UserError

SHOWN = 6  # vector elements the text output shows per row
MAX_FILE = 64 << 20  # bytes of --file read at most: far more than a run encodes in a while

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
    parser = ArgumentParser(
        prog="bertpretrain encode",
        description="Contextual vectors of a sentence or a sentence pair from a checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", nargs="*", metavar="TEXT", help="a sentence, or two for a pair")
    parser.add_argument(
        "--file", help="one input per line, a tab between the sentences of a pair; - for stdin"
    )
    parser.add_argument(
        "--token", metavar="WORD", help="print this word's vector (every occurrence)"
    )
    parser.add_argument("--format", choices=["text", "json"], default="text", help="default: text")
    parser.add_argument("--output", metavar="FILE", help="write the vectors to a .npy or .npz file")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a checkpoint file or a run dir (its newest checkpoint); default: outputs/latest, "
        "else the newest outputs/**/checkpoints/step_*.pt",
    )
    parser.add_argument(
        "--device", default="cpu", metavar="NAME", help="cpu (default), cuda, cuda:N, mps"
    )
    parser.add_argument(
        "--max-len",
        type=int,
        metavar="N",
        help="length limit in tokens, <cls>/<sep> included; default and most: the checkpoint's "
        "training max_len",
    )
    parser.add_argument(
        "--truncate", action="store_true", help="cut the longest sentence until the input fits"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="inputs per batch (default: 64)"
    )
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    inputs = _inputs(args)
    _check_options(args)
    encoder = Encoder.load(args.checkpoint, args.device, args.max_len)
    if encoder.collapsed:
        _warn_collapsed(encoder)
    if args.file is None:
        encodings = [encoder.encode(*inputs[0], truncate=args.truncate)]
    else:
        try:
            encodings = encoder.encode_batch(inputs, args.batch_size, truncate=args.truncate)
        except UserError as e:
            raise UserError(f"--file {args.file}: {e}") from None
    if args.output:
        shapes = save_vectors(Path(args.output), encodings)
        print(f"wrote {args.output}: {', '.join(f'{k} {v}' for k, v in shapes.items())}")
    elif args.token is not None:
        _print_token(args.token, encodings[0], args.format, encoder.tokenizer.lowercase)
    elif args.format == "json":
        for encoding in encodings:
            print(json.dumps(_document(encoding, encoder)))
    else:
        _print_text(encodings, encoder)


def _warn_collapsed(encoder: Encoder) -> None:
    print(
        f"bertpretrain: warning: {encoder.source} was recorded as collapsed (validation token "
        f"spread {encoder.val_metrics['token_spread']:.1g} at step "
        f"{encoder.val_metrics.get('step', '?')}): every token gets almost the same vector, "
        "whatever its context; train it with warmup (the default optim) or longer",
        file=sys.stderr,
    )


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
    """One input per line, a tab between the sentences of a pair; trailing blank lines
    ignored. At most MAX_FILE bytes are read: /dev/zero or an endless pipe would otherwise
    fill the memory until the kernel kills the process without a word."""
    try:
        if path == "-":
            data = getattr(sys.stdin, "buffer", sys.stdin).read(MAX_FILE + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise UserError(
                f"--file {path} holds more than {MAX_FILE >> 20} MiB (or never ends, like "
                "/dev/zero); split it into smaller files and encode each"
            )
        text = data if isinstance(data, str) else data.decode("utf-8")
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
    for number, line in enumerate(lines, 1):
        parts = line.split("\t")
        if not line.strip():
            raise UserError(f"--file {path}: line {number} is empty; remove blank lines")
        if len(parts) > 2:
            raise UserError(
                f"--file {path}: line {number} has {len(parts)} tab-separated sentences; "
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


def _shape(encoding: Encoding) -> tuple[int, int, int]:
    return (1, *encoding.vectors.shape)  # (inputs, tokens, hidden units)


def _text_block(encoding: Encoding) -> list[str]:
    hidden = encoding.vectors.shape[1]
    rows = list(zip(encoding.tokens, encoding.words, encoding.segments))
    cut = f"  ({encoding.truncated} tokens cut by --truncate)" if encoding.truncated else ""
    lines = [
        "tokens     " + " ".join(_shown(token, word) for token, word, _ in rows) + cut,
        "segments   " + " ".join(map(str, encoding.segments)),
        f"shape      {_shape(encoding)}  (inputs, tokens, hidden units)",
        f"<cls>      {_numbers(encoding.cls, SHOWN)}  (the whole input; first {SHOWN} of {hidden})",
        "",
        f"  #  {'token':<20} seg  vector (first {SHOWN} of {hidden})",
    ]
    for i, (token, word, segment) in enumerate(rows):
        shown = _numbers(encoding.vectors[i], SHOWN)
        lines.append(f"{i:>3}  {_shown(token, word):<20} {segment:>3}  {shown}")
    return lines


def _print_text(encodings: list[Encoding], encoder: Encoder) -> None:
    trained = f"step {encoder.step}" if encoder.step is not None else "a transformers folder"
    print(f"checkpoint {encoder.source} ({trained})")
    for i, encoding in enumerate(encodings):
        print()
        if len(encodings) > 1:
            print(f"input {i + 1}")
        print("\n".join(_text_block(encoding)))


def _document(encoding: Encoding, encoder: Encoder) -> dict:
    return {
        "checkpoint": str(encoder.source),
        "tokens": encoding.tokens,
        "words": encoding.words,
        "segments": encoding.segments,
        "shape": list(_shape(encoding)),
        "vectors": encoding.vectors.tolist(),
        "cls": encoding.cls.tolist(),
    }


def _print_token(token: str, encoding: Encoding, fmt: str, lowercase: bool) -> None:
    word = token.lower() if lowercase else token  # as the text was
    positions = [i for i, w in enumerate(encoding.words) if w == word]  # all pieces of the word
    if not positions:
        words = " ".join(w for w in dict.fromkeys(encoding.words) if w not in (CLS, SEP))
        raise UserError(f"--token {token!r} is not in the input; its words are: {words}")
    if fmt == "json":
        doc = {"token": word, "positions": positions, "tokens": encoding.tokens}
        doc |= {"words": encoding.words, "segments": encoding.segments}
        doc |= {"shape": list(_shape(encoding))}
        print(json.dumps(doc | {"vectors": [encoding.vectors[i].tolist() for i in positions]}))
        return
    for i in positions:
        row = encoding.vectors[i]
        print(
            f"{_shown(encoding.tokens[i], word)} at position {i} (segment {encoding.segments[i]}), "
            f"{len(row)} values:"
        )
        for start in range(0, len(row), 8):
            print("  " + _numbers(row[start : start + 8]))
