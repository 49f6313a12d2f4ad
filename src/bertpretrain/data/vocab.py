"""Word-level vocabulary with BERT's reserved tokens, stored as a plain list of tokens."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

UNK, PAD, MASK, CLS, SEP = "<unk>", "<pad>", "<mask>", "<cls>", "<sep>"
RESERVED = [UNK, PAD, MASK, CLS, SEP]  # ids 0..4 in every vocabulary
UNK_ID, PAD_ID, MASK_ID, CLS_ID, SEP_ID = range(5)


def build_vocab(tokens: Iterable[str], min_freq: int) -> list[str]:
    """Reserved tokens, then every token seen at least `min_freq` times, most frequent first.

    Ties are broken alphabetically so the same corpus always gives the same ids.
    """
    counts = Counter(tokens)
    for token in RESERVED:
        counts.pop(token, None)
    kept = [(t, c) for t, c in counts.items() if c >= min_freq]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return RESERVED + [t for t, _ in kept]


def token_index(vocab: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab)}


def check_vocab(vocab: object) -> list[str]:
    """A vocabulary read from a file: a list of unique strings starting with the reserved ones."""
    if (
        not isinstance(vocab, list)
        or vocab[: len(RESERVED)] != RESERVED
        or not all(isinstance(t, str) for t in vocab)
        or len(set(vocab)) != len(vocab)
    ):
        raise ValueError("not a bertpretrain vocabulary")
    return vocab
