"""Text -> token ids: the reference's word-level vocabulary, or a trained WordPiece one.

- `word` (the default, d2l's rule): lower-case, split on whitespace, look each word up in
  the words seen at least `min_freq` times; anything else is `<unk>`.
- `wordpiece` (BERT's): BERT's normaliser (lower-casing strips accents too) and
  pre-tokeniser (whitespace and punctuation), then greedy longest-match pieces, a
  word-internal piece written `##piece`. Trained on the training split with the
  `tokenizers` library (optional extra `wordpiece`).

Both vocabularies start with the reserved ids 0..4 (`<unk> <pad> <mask> <cls> <sep>`), and
both are fully described by their kind, `lowercase` and the token list: that is what a
checkpoint stores, and `Tokenizer` rebuilds the same tokenisation from it. WordPiece
training in `tokenizers` is not reproducible bit for bit (ties between equally frequent
pairs follow hash order), so a trained vocabulary is cached by the corpus and settings and
a run keeps the one it started with: resumes, every rank, `encode` and `export` use the
checkpoint's.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bertpretrain import files
from bertpretrain.data.parallel import chunked
from bertpretrain.data.vocab import RESERVED, UNK, build_vocab, check_vocab, token_index
from bertpretrain.errors import UserError

KINDS = ("word", "wordpiece")
# Whitespace to str.split() but control characters to BERT's normaliser, which deletes them
# ("a\x0bb" is one word to BERT): \v \f, the information separators and NEL.
_SPLITS = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
END = "\0"  # marks the end of a sentence in `split_words`
PREFIX = "##"  # marks a piece that continues the previous one's word
EXTRA_HINT = "pip install 'bertpretrain[wordpiece]'"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"tokenizer=wordpiece needs the tokenizers library: {EXTRA_HINT}") from None
    return tokenizers


def _bert_pipeline(
    model,
    lowercase: bool,
    specials: list[str] = RESERVED,
    strip_accents: bool | None = None,
    chinese_chars: bool = True,
):
    """A `tokenizers.Tokenizer` with BERT's normaliser and pre-tokeniser around `model`."""
    tk = _tokenizers()
    tok = tk.Tokenizer(model)
    tok.normalizer = tk.normalizers.BertNormalizer(
        lowercase=lowercase, strip_accents=strip_accents, handle_chinese_chars=chinese_chars
    )
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    # Registered as special tokens, a literal `<unk>` in the text (WikiText has many) is
    # the unknown token, as it is to the word-level vocabulary, instead of `< unk >`.
    tok.add_special_tokens(specials)
    return tok


class Tokenizer:
    """A vocabulary and the rule that maps text onto it.

    `published` describes a vocabulary read from a published BERT's `vocab.txt`
    (hf/published.py): "names", its special tokens in our reserved order (unk, pad, mask,
    cls, sep), which take ids 0..4 here as ours do; "ids", their lines in vocab.txt (the
    other tokens keep their order after them); "strip_accents" and "chinese_chars", its
    normaliser's settings. So every id rule of ours holds, and export writes vocab.txt back
    in its own order."""

    def __init__(
        self, kind: str, vocab: list[str], lowercase: bool = True, published: dict | None = None
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        self.kind = kind
        self.published = published
        specials = published["names"] if published else RESERVED
        self.vocab = check_vocab(vocab, specials)
        self.lowercase = lowercase
        self.index = token_index(vocab)
        # Out-of-vocabulary words -> int() == 0 == <unk>, without a Python call per token.
        self._lookup = collections.defaultdict(int, self.index)
        self._lookup[END] = -1
        self._backend = None
        if kind == "wordpiece":
            tk = _tokenizers()
            model = tk.models.WordPiece(
                self.index, unk_token=specials[0], continuing_subword_prefix=PREFIX
            )
            options = published or {}
            self._backend = _bert_pipeline(
                model,
                lowercase,
                specials,
                options.get("strip_accents"),
                options.get("chinese_chars", True),
            )

    def __reduce__(self):
        # Rebuilt from its definition: the `tokenizers` backend is derived state.
        return Tokenizer, (self.kind, self.vocab, self.lowercase, self.published)

    def settings(self) -> dict:
        """What a checkpoint stores beside the vocabulary to rebuild this tokenizer."""
        published = {"published": self.published} if self.published else {}
        return {"kind": self.kind, "lowercase": self.lowercase} | published

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and (
            self.settings(),
            self.vocab,
        ) == (other.settings(), other.vocab)

    def continuation(self) -> np.ndarray | None:
        """(V,) bool: True for ids that continue the previous token's word; None for words."""
        if self.kind == "word":
            return None
        return np.array([t.startswith(PREFIX) for t in self.vocab])

    def encode_sentences(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All sentences' ids concatenated (int32) and each sentence's length (int64)."""
        if self.kind == "word":
            ids, lens = ids_and_lens(split_words(sentences, self.lowercase), self._lookup)
            return ids.astype(np.int32), lens
        return self._wordpiece_ids(sentences)

    def _wordpiece_ids(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_sentences` for WordPiece, tokenising each distinct whitespace-separated
        word once: a corpus repeats its words, and `tokenizers` manages about 400k pieces/s
        on 2 cores. BERT's normaliser and pre-tokeniser act within a word, so a word's pieces
        do not depend on its sentence; the control characters that Python splits on but
        BERT's normaliser deletes (`_SPLITS`) are deleted first, so both see the same words.
        Occurrences become pieces by numpy gathers, not a Python step per word."""
        words = split_words(sentences, lowercase=False, delete=_SPLITS)
        occurrences, words_per_sentence, distinct = number_words(words)
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets we do not need.
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        pieces = [e.ids for e in encode(distinct, add_special_tokens=False)]
        counts = np.fromiter(map(len, pieces), np.int64, len(pieces))
        flat = np.fromiter(itertools.chain.from_iterable(pieces), np.int32, int(counts.sum()))
        starts = np.cumsum(counts) - counts  # of each distinct word's pieces in `flat`
        n = counts[occurrences]  # pieces of each occurrence
        before = np.cumsum(n) - n  # pieces of the earlier occurrences
        ids = flat[np.repeat(starts[occurrences] - before, n) + np.arange(int(n.sum()))]
        last = np.cumsum(words_per_sentence)  # one past each sentence's last occurrence
        pieces_before = np.concatenate([[0], np.cumsum(n)])
        return ids, pieces_before[last] - pieces_before[last - words_per_sentence]

    def split(self, sentence: str) -> list[tuple[str, int]]:
        """(word, id) for each token of one sentence; a word split into n pieces appears n
        times, so callers can show and find tokens by the word the user wrote."""
        if self.kind == "word":
            words = split_words([sentence], self.lowercase)[:-1]
            return [(w, self.index.get(w, 0)) for w in words]
        enc = self._backend.encode(sentence, add_special_tokens=False)
        spans: dict[int, tuple[int, int]] = {}
        for word, (start, end) in zip(enc.word_ids, enc.offsets):
            first = spans.get(word, (start, end))[0]
            spans[word] = (first, end)
        out = []
        for word, token_id in zip(enc.word_ids, enc.ids):
            start, end = spans[word]
            text = sentence[start:end]
            out.append((text.lower() if self.lowercase else text, token_id))
        return out


def train_tokenizer(
    kind: str, sentences: Iterable[str], min_freq: int, vocab_size: int | None, lowercase: bool
) -> Tokenizer:
    """A vocabulary learnt from the training sentences, read once as a stream. (`prepare`
    learns a word vocabulary in the same pass that tokenises the corpus instead.)"""
    if kind == "word":
        counts: collections.Counter = collections.Counter()
        for chunk in chunked(sentences, 10_000):
            counts.update(split_words(chunk, lowercase))
        del counts[END]
        return Tokenizer("word", build_vocab(counts, min_freq), lowercase)
    tk = _tokenizers()
    backend = _bert_pipeline(
        tk.models.WordPiece(unk_token=UNK, continuing_subword_prefix=PREFIX), lowercase
    )
    trainer = tk.trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_freq,
        special_tokens=RESERVED,
        limit_alphabet=1000,  # BERT's: the rarest characters of a big corpus become <unk>
        continuing_subword_prefix=PREFIX,
        show_progress=False,
    )
    # Batches of sentences: one call into Rust per 1000 sentences, not one each (17% faster).
    backend.train_from_iterator(chunked(sentences, 1000), trainer)
    by_id = sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    vocab = [t for t, _ in by_id]
    if vocab[: len(RESERVED)] != RESERVED or [i for _, i in by_id] != list(range(len(vocab))):
        raise RuntimeError(f"tokenizers gave an unexpected vocabulary: {vocab[:8]}")
    return Tokenizer("wordpiece", vocab, lowercase)


def split_words(
    sentences: Sequence[str], lowercase: bool, delete: re.Pattern | None = None
) -> list[str]:
    """The words of the sentences, each sentence followed by END: the word-level rule
    (lower-case, split on whitespace) in one str.split over the joined sentences, where
    splitting each sentence would cost a Python call per sentence. NUL, and whatever
    `delete` matches, is deleted from the text first, as BERT's normaliser deletes it, so
    END (a NUL standing alone) marks only ends."""
    joined = " \0 ".join(sentences)
    if joined.count(END) != len(sentences) - 1:
        joined = " \0 ".join(s.replace(END, "") for s in sentences)
    if delete is not None and delete.search(joined):
        joined = delete.sub("", joined)
    joined += " \0"
    return (joined.lower() if lowercase else joined).split()


def ids_and_lens(words: list[str], lookup: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """`split_words`'s words as ids (int64) and each sentence's length; `lookup` maps END
    to -1 (a defaultdict, so unseen words cost no Python call either)."""
    ids = np.fromiter(map(lookup.__getitem__, words), np.int64, len(words))
    ends = np.flatnonzero(ids < 0)
    return ids[ids >= 0], np.diff(ends, prepend=-1) - 1


def number_words(words: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`split_words`'s words numbered in order of first appearance: each occurrence's
    number, each sentence's length, and the distinct words by number."""
    numbers: dict[str, int] = collections.defaultdict(itertools.count().__next__)
    numbers[END] = -1
    ids, lens = ids_and_lens(words, numbers)
    del numbers[END]
    return ids, lens, list(numbers)


def save(tokenizer: Tokenizer, path: Path) -> None:
    """The vocabulary and settings as JSON, written atomically (a cache file)."""
    text = json.dumps(tokenizer.settings() | {"vocab": tokenizer.vocab})
    files.atomic_write(path, lambda f: f.write(text.encode()))


def load(path: Path) -> Tokenizer:
    return from_state(json.loads(path.read_text()))


def from_state(state: dict) -> Tokenizer:
    """The tokenizer a checkpoint holds (settings under "tokenizer", plus "vocab"), or one
    saved as `settings()` plus "vocab". Checkpoints from before WordPiece hold only a word
    vocabulary. A damaged vocabulary is a ValueError: written out as `vocab.txt`, a token
    with a line break would shift every later id by one."""
    settings = state.get("tokenizer", state)
    vocab = state["vocab"]
    kind = settings.get("kind", "word")
    if kind not in ("word", "wordpiece"):
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    published = settings.get("published")
    if published is not None and not (
        isinstance(published, dict)
        and len(published.get("names", ())) == len(published.get("ids", ())) == len(RESERVED)
    ):
        raise ValueError("its published-vocabulary settings are damaged")
    return Tokenizer(kind, vocab, bool(settings.get("lowercase", True)), published)
