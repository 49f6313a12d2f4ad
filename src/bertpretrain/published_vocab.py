"""A published BERT's vocabulary: `vocab.txt` and its tokenizer settings, read into our
tokenizer, and the order to write them back in.

The folder's WordPiece vocabulary runs through the `tokenizers` library's BERT pipeline
(data/tokenizer.py) with the folder's settings (lower-casing, accents, CJK). Our code keeps
the special tokens at ids 0..4, so the vocabulary is reordered: [UNK] [PAD] [MASK] [CLS]
[SEP] first, every other token after them in its own order. `published_order` maps back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import RESERVED
from bertpretrain.errors import UserError

# Our special tokens' names in transformers' BertTokenizer, in our reserved order.
SPECIAL_KEYS = ["unk_token", "pad_token", "mask_token", "cls_token", "sep_token"]
SPECIAL_DEFAULTS = ["[UNK]", "[PAD]", "[MASK]", "[CLS]", "[SEP]"]


def read_tokenizer(folder: Path) -> Tokenizer:
    """The folder's vocab.txt and BertTokenizer settings, with its special tokens at our
    reserved ids (the module docstring)."""
    try:
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise UserError(
            f"{folder} has no readable vocab.txt ({e.strerror}); give a BERT folder"
        ) from None
    tokens = lines[:-1] if lines and lines[-1] == "" else lines
    settings = tokenizer_settings(folder)
    names = [settings.get(key) or default for key, default in zip(SPECIAL_KEYS, SPECIAL_DEFAULTS)]
    index = {t: i for i, t in enumerate(tokens)}
    if len(index) != len(tokens):
        raise UserError(f"{folder / 'vocab.txt'} lists a token twice")
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"{folder / 'vocab.txt'} lacks the special token(s) {', '.join(missing)}")
    ids = [index[n] for n in names]
    vocab = names + [t for i, t in enumerate(tokens) if i not in set(ids)]
    strip = settings.get("strip_accents")
    published = {
        "names": names,
        "ids": ids,
        "strip_accents": None if strip is None else bool(strip),
        "chinese_chars": bool(settings.get("tokenize_chinese_chars", True)),
    }
    try:
        return Tokenizer("wordpiece", vocab, bool(settings.get("do_lower_case", True)), published)
    except ValueError as e:
        raise UserError(f"{folder / 'vocab.txt'} is not a usable vocabulary: {e}") from None


def tokenizer_settings(folder: Path) -> dict:
    settings: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise UserError(f"{path} is not valid JSON ({e})") from None
            # Special tokens may be written as {"content": "[CLS]", ...} (AddedToken).
            settings |= {k: v["content"] if isinstance(v, dict) else v for k, v in found.items()}
    return settings


def published_order(tokenizer: Tokenizer) -> np.ndarray:
    """For each line of the published vocab.txt, our id of its token."""
    ids = tokenizer.published["ids"]
    ours = np.empty(len(tokenizer.vocab), np.int64)
    special = np.zeros(len(ours), bool)
    special[ids] = True
    ours[ids] = np.arange(len(RESERVED))
    ours[~special] = np.arange(len(RESERVED), len(ours))
    return ours


def published_vocab(tokenizer: Tokenizer) -> list[str]:
    """vocab.txt's lines, in the published order."""
    return [tokenizer.vocab[i] for i in published_order(tokenizer)]
