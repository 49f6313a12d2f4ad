"""`init=`: the model a run starts from, a published BERT (a transformers folder or a Hub
name) or a run of ours (a run dir or checkpoint), read as its architecture, its tokenizer
and its weights, each when it is needed.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from bertpretrain.config import ModelConfig
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.errors import UserError
from bertpretrain.hf import published
from bertpretrain.hf.vocab import read_tokenizer
from bertpretrain.load import find_model, load_model
from bertpretrain.model.architecture import architecture_of
from bertpretrain.model.bert import BertConfig, BertForPretraining


def init_architecture(source: str) -> tuple[Path, BertConfig]:
    """What `init=` names (a transformers folder, a Hub name, or one of our run dirs or
    checkpoints) and its architecture, read without building the model."""
    path = find_init(source)
    if published.is_model_folder(path):
        return path, published.read_config(path)
    return path, load_model(path).model.config


def find_init(source: str) -> Path:
    """The transformers folder or our checkpoint file that `init=source` names."""
    path = published.resolve(source)
    if not os.path.lexists(path):  # a dangling link: checkpoint.resolve says so
        raise UserError(
            f"init={source} does not exist; give a transformers BERT folder, a Hub name such "
            "as bert-base-uncased, or a run dir or checkpoint of ours"
        )
    # a transformers folder; a file as it is; a run dir at the epoch its summary reports
    return find_model(path)


def init_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer that `init_architecture` found at `path`, without the weights when it
    is a transformers folder."""
    return read_tokenizer(path) if published.is_model_folder(path) else init_weights(path)[1]


def init_weights(path: Path) -> tuple[BertForPretraining, Tokenizer]:
    """The model and tokenizer that `init_architecture` found at `path`. A fine-tuned run
    gives its encoder, with fresh MLM and NSP heads in place of its task's head."""
    loaded = load_model(path)
    model = loaded.model
    if not isinstance(model, BertForPretraining):
        model = BertForPretraining(loaded.model.config)
        model.bert.load_state_dict(loaded.model.bert.state_dict())
    return model, loaded.tokenizer


def trained_max_len(source: str) -> int:
    """The longest input the model `init=source` names was trained for: a checkpoint's
    data.max_len, or a transformers folder's model_max_length (else its position table)."""
    path = find_init(source)
    if published.is_model_folder(path):
        return published.trained_len(path, published.read_config(path))
    return load_model(path).max_len  # one read of the checkpoint


class Adopted(NamedTuple):
    """What `init=` names, read once before a run or a plan is set up."""

    path: Path  # the transformers folder or our checkpoint file
    architecture: BertConfig  # its architecture, vocabulary included
    model: ModelConfig  # the configured model.* with that architecture, named "init"


def adopt(source: str, model: ModelConfig, max_len: int) -> Adopted:
    """`init=source` read, its architecture in a new `model.*` to replace `model`, the
    configured one (never changed): the run's record and checkpoints then say what was
    trained, and a resume compares it. `max_len` is data.max_len, checked to fit."""
    path, arch = init_architecture(source)
    if max_len > arch.max_position:
        raise UserError(
            f"data.max_len={max_len} is longer than init={source}'s "
            f"{arch.max_position} positions; use data.max_len={arch.max_position} or less"
        )
    return Adopted(path, arch, replace(model, name="init", **architecture_of(arch)))
