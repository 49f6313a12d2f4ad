"""Data pipeline: corpus -> tokenizer -> prepared store -> NSP + MLM examples -> batches.

Three corpora (`data=` in conf/data/): WikiText-2 (`corpus.py`, downloaded when needed),
a user's text files (`text.py`) and a `datasets` dataset (`hf.py`). Each gives paragraphs of
sentences; `store.py` tokenises them once into memory-mapped arrays, and `examples.py`
turns those into examples.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from bertpretrain.errors import UserError

if TYPE_CHECKING:
    from bertpretrain.config import DataConfig, TokenizerConfig
    from bertpretrain.data.corpus import Corpus
    from bertpretrain.data.examples import Dataset
    from bertpretrain.data.store import Store
    from bertpretrain.data.tokenizer import Tokenizer


def load(
    cfg: DataConfig, tokenizer_cfg: TokenizerConfig, seed: int, tokenizer: Tokenizer | None = None
) -> Dataset:
    """The run's tokenizer and examples: corpus located (or downloaded), built or cached.

    `tokenizer` (a resumed checkpoint's, or rank 0's) replaces training one.
    """
    # Imported here so `encode`, which needs only the tokenizer, starts without them.
    from bertpretrain.data.examples import load_dataset

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
    import json

    from bertpretrain import distributed
    from bertpretrain.data.tokenizer import from_state

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
    from bertpretrain.data.examples import tokenizer_and_store

    return tokenizer_and_store(make_corpus(cfg), tokenizer_cfg, cache_dir(cfg), tokenizer)[1]


def cache_dir(cfg: DataConfig) -> Path | None:
    return Path(cfg.root).expanduser() / "cache" if cfg.cache else None


def _digest_memo(cfg: DataConfig) -> Path | None:
    """Where the corpus files' digests are remembered (`corpus.file_digest`)."""
    cache = cache_dir(cfg)
    return cache / "digests.json" if cache is not None else None


def make_corpus(cfg: DataConfig) -> Corpus:
    """The configured corpus: its splits' readers and digests."""
    from bertpretrain.config import HFConfig, TextConfig

    if isinstance(cfg, TextConfig):
        return _text_files(cfg)
    if isinstance(cfg, HFConfig):
        return _hf(cfg)
    return _wikitext2(cfg)


def _wikitext2(cfg) -> Corpus:
    from bertpretrain.data.corpus import corpus_dir, split_path, wikitext

    folder = corpus_dir(cfg.dir, cfg.root, list(cfg.urls), cfg.sha1)
    train = split_path(folder, cfg.train_split)
    valid = split_path(folder, cfg.valid_split) if cfg.valid_split else None
    return wikitext(train, valid, _digest_memo(cfg))


def _text_files(cfg) -> Corpus:
    from bertpretrain.data.corpus import Corpus, file_digest
    from bertpretrain.data.text import read_text_files, text_file

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


def _hf(cfg) -> Corpus:
    """The splits are loaded (memory-mapped Arrow files) up front to check them, and
    streamed a batch of rows at a time when prepared."""
    from bertpretrain.data.corpus import Corpus

    train, train_digest = _hf_split(cfg, cfg.train_split)
    valid, valid_digest = _hf_split(cfg, cfg.valid_split) if cfg.valid_split else (None, "-")
    name = cfg.name + (f" ({cfg.config})" if cfg.config else "")
    return Corpus(f"{name} {cfg.train_split}", train, train_digest, valid, valid_digest)


def _hf_split(cfg, split: str):
    """A reader of one split's paragraphs and the split's digest."""
    from bertpretrain.data.corpus import text_digest
    from bertpretrain.data.hf import hf_description, hf_digest, hf_paragraphs, load_hf

    ds = load_hf(cfg.name, cfg.config, split, cfg.text_column, cfg.revision)
    what = hf_description(cfg.name, cfg.config, split, cfg.text_column)

    def read():
        return hf_paragraphs(ds, cfg.text_column, what, breaks=True)

    # A dataset held only in memory has no files to hash: hash its text, read once more.
    return read, hf_digest(ds, split, cfg.text_column) or text_digest(read())
