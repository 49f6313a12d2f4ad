"""A published BERT's vocabulary: `vocab.txt` (or the `tokenizer.json` that transformers 5
writes instead) and its tokenizer settings, read into our tokenizer, and the order to write
them back in.

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
TOKENIZER_JSON = "tokenizer.json"  # what transformers 5 writes in place of vocab.txt


def read_tokenizer(folder: Path) -> Tokenizer:
    """The folder's vocabulary (vocab.txt, or the tokenizer.json that transformers 5 writes
    instead) and BertTokenizer settings, with its special tokens at our reserved ids (the
    module docstring)."""
    tokens, settings = _published_tokens(folder)
    names = [settings.get(key) or default for key, default in zip(SPECIAL_KEYS, SPECIAL_DEFAULTS)]
    index = {t: i for i, t in enumerate(tokens)}
    if len(index) != len(tokens):
        raise UserError(f"{folder}'s vocabulary lists a token twice")
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"{folder}'s vocabulary lacks the special token(s) {', '.join(missing)}")
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
        raise UserError(f"{folder}'s vocabulary is not usable: {e}") from None


def _published_tokens(folder: Path) -> tuple[list[str], dict]:
    """The tokens in id order, and the settings (tokenizer_config.json's, over those of
    tokenizer.json's normaliser)."""
    if not (folder / "vocab.txt").exists() and (folder / TOKENIZER_JSON).is_file():
        tokens, normaliser = _read_tokenizer_json(folder / TOKENIZER_JSON)
        return tokens, normaliser | tokenizer_settings(folder)
    try:
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise UserError(
            f"{folder} has no readable vocab.txt or {TOKENIZER_JSON} ({e.strerror}); give a "
            "BERT folder"
        ) from None
    return (lines[:-1] if lines and lines[-1] == "" else lines), tokenizer_settings(folder)


def _read_tokenizer_json(path: Path) -> tuple[list[str], dict]:
    """A WordPiece tokenizer.json, loaded by the `tokenizers` library as transformers
    loads it: its vocabulary in id order and its BertNormalizer's settings."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import normalizers

    try:
        loaded = HFTokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception for any bad file
        raise UserError(f"{path} is not a readable tokenizer ({str(e)[:160]})") from None
    if type(loaded.model).__name__ != "WordPiece":
        raise UserError(
            f"{path} holds a {type(loaded.model).__name__} tokenizer, not BERT's WordPiece; "
            "give a BERT folder"
        )
    by_id = sorted((i, t) for t, i in loaded.get_vocab(with_added_tokens=True).items())
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise UserError(f"{path}: the vocabulary's ids are not 0..{len(by_id) - 1} each once")
    norm = loaded.normalizer
    settings = {}
    if isinstance(norm, normalizers.BertNormalizer):
        settings = {
            "do_lower_case": norm.lowercase,
            "strip_accents": norm.strip_accents,
            "tokenize_chinese_chars": norm.handle_chinese_chars,
        }
    return [t for _, t in by_id], settings


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
