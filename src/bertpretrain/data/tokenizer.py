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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from bertpretrain import files
from bertpretrain.data.vocab import RESERVED, UNK, build_vocab, check_vocab, token_index
from bertpretrain.errors import UserError

KINDS = ("word", "wordpiece")
# Whitespace to str.split() but control characters to BERT's normaliser, which deletes them
# ("a\x0bb" is one word to BERT): \v \f, the information separators and NEL.
_SPLITS = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
PREFIX = "##"  # marks a piece that continues the previous one's word
EXTRA_HINT = "pip install 'bertpretrain[wordpiece]'"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"tokenizer=wordpiece needs the tokenizers library: {EXTRA_HINT}") from None
    return tokenizers


def _bert_pipeline(model, lowercase: bool):
    """A `tokenizers.Tokenizer` with BERT's normaliser and pre-tokeniser around `model`."""
    tk = _tokenizers()
    tok = tk.Tokenizer(model)
    tok.normalizer = tk.normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    # Registered as special tokens, a literal `<unk>` in the text (WikiText has many) is
    # the unknown token, as it is to the word-level vocabulary, instead of `< unk >`.
    tok.add_special_tokens(RESERVED)
    return tok


class Tokenizer:
    """A vocabulary and the rule that maps text onto it."""

    def __init__(self, kind: str, vocab: list[str], lowercase: bool = True):
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        self.kind = kind
        self.vocab = check_vocab(vocab)
        self.lowercase = lowercase
        self.index = token_index(vocab)
        self._backend = None
        if kind == "wordpiece":
            tk = _tokenizers()
            model = tk.models.WordPiece(self.index, unk_token=UNK, continuing_subword_prefix=PREFIX)
            self._backend = _bert_pipeline(model, lowercase)

    def settings(self) -> dict:
        """What a checkpoint stores beside the vocabulary to rebuild this tokenizer."""
        return {"kind": self.kind, "lowercase": self.lowercase}

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
            words = [self._words(s) for s in sentences]
            lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
            # Words outside the vocabulary -> int() == 0 == <unk>, without a Python call
            # per token: a loop over WikiText-2's 2.1M tokens would cost a second itself.
            lookup = collections.defaultdict(int, self.index)
            flat = itertools.chain.from_iterable(words)
            ids = np.fromiter(map(lookup.__getitem__, flat), dtype=np.int32, count=int(lens.sum()))
            return ids, lens
        return self._wordpiece_ids(sentences)

    def _wordpiece_ids(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_sentences` for WordPiece, tokenising each distinct whitespace-separated
        word once: a corpus repeats its words, and `tokenizers` manages about 400k pieces/s
        on 2 cores. BERT's normaliser and pre-tokeniser act within a word, so a word's pieces
        do not depend on its sentence, except where Python splits on a character that BERT's
        normaliser deletes instead (`_SPLITS`): such a sentence is tokenised whole, as one
        "word"."""
        words = [s.split() for s in sentences]
        if _SPLITS.search("\n".join(sentences)):
            for i, sentence in enumerate(sentences):
                if _SPLITS.search(sentence):
                    words[i] = [sentence]
        flat = list(itertools.chain.from_iterable(words))
        distinct = list(dict.fromkeys(flat))
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets we do not need.
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        known = dict(zip(distinct, (e.ids for e in encode(distinct, add_special_tokens=False))))
        per_word = np.fromiter(map(len, map(known.__getitem__, flat)), np.int64, len(flat))
        ids = itertools.chain.from_iterable(map(known.__getitem__, flat))
        ids = np.fromiter(ids, dtype=np.int32, count=int(per_word.sum()))
        ends = np.cumsum(np.fromiter(map(len, words), np.int64, len(words)))
        pieces_before = np.concatenate([[0], np.cumsum(per_word)])  # pieces before word n
        lens = pieces_before[ends] - pieces_before[np.concatenate([[0], ends[:-1]])]
        return ids, lens

    def split(self, sentence: str) -> list[tuple[str, int]]:
        """(word, id) for each token of one sentence; a word split into n pieces appears n
        times, so callers can show and find tokens by the word the user wrote."""
        if self.kind == "word":
            return [(w, self.index.get(w, 0)) for w in self._words(sentence)]
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

    def _words(self, sentence: str) -> list[str]:
        return (sentence.lower() if self.lowercase else sentence).split()


def train_tokenizer(
    kind: str, sentences: Iterable[str], min_freq: int, vocab_size: int | None, lowercase: bool
) -> Tokenizer:
    """A vocabulary learnt from the training sentences, read once as a stream."""
    if kind == "word":
        return Tokenizer("word", build_vocab(_words(sentences, lowercase), min_freq), lowercase)
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
    backend.train_from_iterator(sentences, trainer)
    by_id = sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    vocab = [t for t, _ in by_id]
    if vocab[: len(RESERVED)] != RESERVED or [i for _, i in by_id] != list(range(len(vocab))):
        raise RuntimeError(f"tokenizers gave an unexpected vocabulary: {vocab[:8]}")
    return Tokenizer("wordpiece", vocab, lowercase)


def _words(sentences: Iterable[str], lowercase: bool) -> Iterator[str]:
    """The words of a stream of sentences, split a chunk at a time: str.split over a joined
    chunk runs in C, and the chunk bounds the memory."""
    it = iter(sentences)
    while chunk := list(itertools.islice(it, 10_000)):
        text = "\n".join(chunk)
        yield from (text.lower() if lowercase else text).split()


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
    return Tokenizer(kind, vocab, bool(settings.get("lowercase", True)))
