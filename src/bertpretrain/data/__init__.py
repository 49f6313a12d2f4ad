"""Data pipeline: corpus -> vocabulary -> NSP + MLM examples -> batches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertpretrain.config import DataConfig
    from bertpretrain.data.examples import Dataset


def load(cfg: DataConfig, seed: int) -> Dataset:
    """The run's vocabulary and examples: corpus located (or downloaded), built or cached."""
    # Imported here so `encode`, which needs only data.vocab, starts without them.
    from bertpretrain.data.corpus import corpus_dir, split_path
    from bertpretrain.data.examples import load_dataset

    folder = corpus_dir(cfg.dir, cfg.root, list(cfg.urls), cfg.sha1)
    train = split_path(folder, cfg.train_split)
    valid = split_path(folder, cfg.valid_split) if cfg.valid_split else None
    cache = Path(cfg.root).expanduser() / "cache" if cfg.cache else None
    return load_dataset(train, valid, cfg.max_len, cfg.min_freq, seed, cache)
