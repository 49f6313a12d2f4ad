"""The data pipeline in order: the configured corpus, its tokenizer (given, cached or
trained), its prepared store (cached or built) and each split's examples (`load`); under
torchrun, rank 0 builds first and the other ranks take its vocabulary (`load_on_every_rank`).

Three corpora (`data=` in conf/data/): WikiText-2 (corpus.py, downloaded when needed), a
user's text files (text.py) and a `datasets` dataset (hf.py). Each gives paragraphs of
sentences; store.py tokenises them once into memory-mapped arrays, pairing.py picks each
split's sentence pairs and examples.py makes the masked examples a batch at a time. What
lands in the cache (data.root/cache) is named by cache.py's rule.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertpretrain import distributed
from bertpretrain.config import (
    DataConfig,
    HFConfig,
    TextConfig,
    TokenizerConfig,
    WikiText2Config,
)
from bertpretrain.data import cache
from bertpretrain.data.corpus import Corpus, corpus_dir, file_digest, split_path, text_digest
from bertpretrain.data.corpus import wikitext as wikitext_corpus
from bertpretrain.data.examples import Examples, continuation_table
from bertpretrain.data.hf import hf_description, hf_digest, hf_paragraphs, load_hf
from bertpretrain.data.pairing import split_pairs
from bertpretrain.data.store import Split, Store, prepare_learning_words
from bertpretrain.data.store import prepare as prepare_store
from bertpretrain.data.text import read_text_files, text_file
from bertpretrain.data.tokenizer import Tokenizer, from_state, train_tokenizer
from bertpretrain.data.tokenizer import load as load_tokenizer
from bertpretrain.data.tokenizer import save as save_tokenizer
from bertpretrain.data.vocab import RESERVED
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: Examples
    valid: Examples | None
    corpus_digest: str  # the training split's, so a resume can tell the corpus changed

    @property
    def vocab(self) -> list[str]:
        return self.tokenizer.vocab


# --- from the config -------------------------------------------------------------------


def load(
    cfg: DataConfig, tokenizer_cfg: TokenizerConfig, seed: int, tokenizer: Tokenizer | None = None
) -> Dataset:
    """The run's tokenizer and examples: corpus located (or downloaded), built or cached.

    `tokenizer` (a resumed checkpoint's, or rank 0's) replaces training one.
    """
    return load_dataset(
        make_corpus(cfg),
        tokenizer_cfg,
        cfg.max_len,
        seed,
        cache_dir(cfg),
        cfg.whole_word_mask,
        tokenizer,
        cfg.pairing,
        cfg.short_seq_prob,
    )


def load_on_every_rank(
    cfg: DataConfig, tokenizer_cfg: TokenizerConfig, seed: int, tokenizer: Tokenizer | None = None
) -> Dataset:
    """`load`, under torchrun too: rank 0 builds first and the other ranks take its
    tokenizer, since WordPiece training is not reproducible bit for bit and every rank
    must share one vocabulary. A given `tokenizer` (a checkpoint's, a published model's)
    is every rank's already."""
    ranks = distributed.ranks()
    if ranks.world == 1 or tokenizer is not None:
        return load(cfg, tokenizer_cfg, seed, tokenizer)
    if ranks.main:
        try:
            dataset = load(cfg, tokenizer_cfg, seed)
        except BaseException:
            distributed.broadcast_str("")  # releases the other ranks, which stop too
            raise
        built = dataset.tokenizer
        distributed.broadcast_str(json.dumps(built.settings() | {"vocab": built.vocab}))
        return dataset
    shared = distributed.broadcast_str(None)
    if not shared:
        raise UserError("rank 0 could not build the data; its log says why")
    return load(cfg, tokenizer_cfg, seed, from_state(json.loads(shared)))


def prepare(
    cfg: DataConfig, tokenizer_cfg: TokenizerConfig, tokenizer: Tokenizer | None = None
) -> Store:
    """The corpus's tokenizer and prepared store, built once into the cache (or found
    there): what `bertpretrain prepare` does ahead of a training job. `tokenizer` (a
    published model's) replaces training one."""
    return tokenizer_and_store(make_corpus(cfg), tokenizer_cfg, cache_dir(cfg), tokenizer)[1]


def cache_dir(cfg: DataConfig) -> Path | None:
    return Path(cfg.root).expanduser() / "cache" if cfg.cache else None


def _digest_memo(cfg: DataConfig) -> Path | None:
    """Where the corpus files' digests are remembered (`corpus.file_digest`)."""
    folder = cache_dir(cfg)
    return folder / "digests.json" if folder is not None else None


# --- the corpus ------------------------------------------------------------------------


def make_corpus(cfg: DataConfig) -> Corpus:
    """The configured corpus: its splits' readers and digests."""
    if isinstance(cfg, TextConfig):
        return _text_files(cfg)
    if isinstance(cfg, HFConfig):
        return _hf(cfg)
    return _wikitext2(cfg)


def _wikitext2(cfg: WikiText2Config) -> Corpus:
    folder = corpus_dir(cfg.dir, cfg.root, list(cfg.urls), cfg.sha1)
    train = split_path(folder, cfg.train_split)
    valid = split_path(folder, cfg.valid_split) if cfg.valid_split else None
    return wikitext_corpus(train, valid, _digest_memo(cfg))


def _text_files(cfg: TextConfig) -> Corpus:
    train = [text_file(f) for f in cfg.files]
    valid = [text_file(f, "data.valid_files") for f in cfg.valid_files]
    train_digest = file_digest(*train, memo=_digest_memo(cfg))
    valid_digest = file_digest(*valid, memo=_digest_memo(cfg)) if valid else "-"
    passes = itertools.count()  # a vocabulary's pass, then the tokenising one: log the first
    return Corpus(
        ", ".join(map(str, train)),
        lambda: read_text_files(cfg.files, train_digest, breaks=True, tell=next(passes) == 0),
        train_digest,
        (lambda: read_text_files(cfg.valid_files, valid_digest, breaks=True)) if valid else None,
        valid_digest,
    )


def _hf(cfg: HFConfig) -> Corpus:
    """The splits are loaded (memory-mapped Arrow files) up front to check them, and
    streamed a batch of rows at a time when prepared."""
    train, train_digest = _hf_split(cfg, cfg.train_split)
    valid, valid_digest = _hf_split(cfg, cfg.valid_split) if cfg.valid_split else (None, "-")
    name = cfg.name + (f" ({cfg.config})" if cfg.config else "")
    return Corpus(f"{name} {cfg.train_split}", train, train_digest, valid, valid_digest)


def _hf_split(cfg: HFConfig, split: str):
    """A reader of one split's paragraphs and the split's digest."""
    ds = load_hf(cfg.name, cfg.config, split, cfg.text_column, cfg.revision)
    what = hf_description(cfg.name, cfg.config, split, cfg.text_column)

    def read():
        return hf_paragraphs(ds, cfg.text_column, what, breaks=True)

    # A dataset held only in memory has no files to hash: hash its text, read once more.
    return read, hf_digest(ds, split, cfg.text_column) or text_digest(read())


# --- the tokenizer and the store, cached -------------------------------------------------


def tokenizer_key(corpus: Corpus, cfg: TokenizerConfig) -> str:
    """Everything that changes a trained vocabulary: the training split and the settings."""
    return cache.key(
        cache.TOKENIZER, corpus.train_digest, cfg.name, cfg.lowercase, cfg.min_freq, cfg.vocab_size
    )


def make_tokenizer(corpus: Corpus, cfg: TokenizerConfig) -> Tokenizer:
    """A vocabulary trained on the training split, read as a stream of sentences."""
    log.info("training a %s vocabulary on %s", cfg.name, corpus.name)
    sentences = (s for p in corpus.read_train() for s in p)
    tokenizer = train_tokenizer(cfg.name, sentences, cfg.min_freq, cfg.vocab_size, cfg.lowercase)
    return _learnt(tokenizer, corpus, cfg)


def _learnt(tokenizer: Tokenizer, corpus: Corpus, cfg: TokenizerConfig) -> Tokenizer:
    if len(tokenizer.vocab) == len(RESERVED):
        raise UserError(
            f"no word of {corpus.name} appears {cfg.min_freq} times; lower data.min_freq "
            "or use a larger corpus"
        )
    return tokenizer


def tokenizer_and_store(
    corpus: Corpus,
    cfg: TokenizerConfig,
    cache_dir: Path | None,
    tokenizer: Tokenizer | None = None,
) -> tuple[Tokenizer, Store]:
    """The run's tokenizer (given, cached or learnt from the training split) and the
    corpus's prepared store (cached or built). A word vocabulary that is not cached yet is
    learnt in the same pass that builds the store."""
    path = cache_dir / f"tokenizer-{tokenizer_key(corpus, cfg)}.json" if cache_dir else None
    if tokenizer is None:
        tokenizer = _cached_tokenizer(path)
    if tokenizer is None and cfg.name == "word":
        log.info("learning a word vocabulary while preparing %s", corpus.name)
        store = prepare_learning_words(corpus, cfg.min_freq, cfg.lowercase, cache_dir)
        _save_tokenizer(_learnt(store.tokenizer, corpus, cfg), path)
        return store.tokenizer, store
    if tokenizer is None:
        tokenizer = make_tokenizer(corpus, cfg)
        _save_tokenizer(tokenizer, path)
    return tokenizer, prepare_store(corpus, tokenizer, cache_dir)


def _cached_tokenizer(path: Path | None) -> Tokenizer | None:
    if path is None or not path.is_file():
        return None
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable vocabulary cache %s (%s); rebuilding", path, e)
        return None
    log.info("vocabulary from cache %s", path)
    return tokenizer


def _save_tokenizer(tokenizer: Tokenizer, path: Path | None) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tokenizer, path)
    except OSError as e:  # a read-only cache must not stop training
        log.warning("could not write vocabulary cache %s: %s", path, e)


# --- the examples ------------------------------------------------------------------------


def load_dataset(
    corpus: Corpus,
    tokenizer_cfg: TokenizerConfig,
    max_len: int,
    seed: int,
    cache_dir: Path | None = None,
    whole_word_mask: bool = False,
    tokenizer: Tokenizer | None = None,
    pairing: str = "d2l",
    short_seq_prob: float = 0.1,
) -> Dataset:
    """The tokenizer (given, cached or trained), the prepared store (cached or built) and
    each split's pairs (made in a moment: only they depend on max_len and the seed).

    `tokenizer` is a resumed run's or another rank's: the run keeps its vocabulary.
    """
    tokenizer, store = tokenizer_and_store(corpus, tokenizer_cfg, cache_dir, tokenizer)
    table = continuation_table(tokenizer, whole_word_mask)

    def examples(split: Split, stream: int) -> Examples:
        pairs = split_pairs(split, store.path, pairing, max_len, seed, stream, short_seq_prob)
        mask_seed = int(np.random.default_rng([seed, stream, 1]).integers(2**62))
        return Examples(split, pairs, max_len, len(tokenizer.vocab), mask_seed, table)

    train = examples(store.train, 0)
    if len(train) == 0:
        raise UserError(
            f"no sentence pair of {corpus.name} fits data.max_len={max_len}; raise data.max_len"
        )
    valid = examples(store.valid, 1) if store.valid is not None else None
    if valid is not None and len(valid) == 0:
        raise UserError(
            "the validation split has no sentence pair that fits "
            f"data.max_len={max_len}; raise data.max_len, or skip validation with "
            "data.valid_split=null"
        )
    return Dataset(tokenizer, train, valid, corpus.train_digest)
