"""Word-level vocabulary with BERT's reserved tokens, stored as a plain list of tokens."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

UNK, PAD, MASK, CLS, SEP = "<unk>", "<pad>", "<mask>", "<cls>", "<sep>"
RESERVED = [UNK, PAD, MASK, CLS, SEP]  # ids 0..4 in every vocabulary
UNK_ID, PAD_ID, MASK_ID, CLS_ID, SEP_ID = range(5)


def build_vocab(tokens: Iterable[str] | Counter, min_freq: int) -> list[str]:
    """Reserved tokens, then every token seen at least `min_freq` times, most frequent first.

    `tokens` is the tokens or their counts. Ties are broken alphabetically so the same
    corpus always gives the same ids.
    """
    counts = Counter(tokens)  # a copy: the reserved tokens are dropped from it
    for token in RESERVED:
        counts.pop(token, None)
    kept = [(t, c) for t, c in counts.items() if c >= min_freq]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return RESERVED + [t for t, _ in kept]


def token_index(vocab: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab)}


def check_vocab(vocab: object, specials: list[str] = RESERVED) -> list[str]:
    """A vocabulary read from a file: unique strings, the reserved ones (`specials`: ours,
    or a published vocabulary's names for them) first, and each a single non-empty line
    without surrounding space (written out as `vocab.txt`, a token with a line break would
    shift every later id by one)."""
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ValueError("the vocabulary is not a list of strings")
    if vocab[: len(RESERVED)] != specials:
        raise ValueError(f"the vocabulary does not start with {' '.join(specials)}")
    for i, token in enumerate(vocab):
        if not token or token.strip() != token or len(token.splitlines()) != 1:
            raise ValueError(
                f"vocabulary token {i} ({token!r}) is empty, has surrounding space or holds "
                "a line break"
            )
    if len(set(vocab)) != len(vocab):
        raise ValueError("the vocabulary holds a token twice")
    return vocab
