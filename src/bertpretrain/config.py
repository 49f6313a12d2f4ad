"""Typed schemas for the YAML in conf/: one dataclass per config group, and `Config`.

The YAML holds every default; the dataclasses here only fix names and types, so an
unknown key or a wrong type fails while Hydra composes the config. `config_compose`
registers them with Hydra and composes conf/; `config_checks` adds the rules a type
cannot express (positive sizes, hidden divisible by heads, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf

from bertpretrain.model.architecture import BertConfig, architecture_of


@dataclass
class ModelConfig(BertConfig):
    """The architecture: the model's own schema (`model.BertConfig`), named. Its
    vocabulary size comes from the tokenizer, never from here."""

    vocab_size: int | None = None
    name: str = MISSING

    def architecture(self, vocab_size: int) -> BertConfig:
        return BertConfig(**{**architecture_of(self), "vocab_size": vocab_size})


@dataclass
class DataConfig:
    """What every corpus shares; `source` picks one of the schemas below."""

    source: str = MISSING
    root: str = MISSING
    max_len: int = MISSING
    min_freq: int = MISSING  # a vocabulary entry's minimum count (tokenizer.min_freq follows it)
    cache: bool = MISSING
    masking: str = MISSING
    whole_word_mask: bool = MISSING
    pairing: str = MISSING  # d2l (the reference's rules) or bert (google-research/bert's)
    short_seq_prob: float = MISSING  # bert pairing: how often a segment aims shorter


@dataclass
class WikiText2Config(DataConfig):
    name: str = MISSING
    dir: str | None = MISSING
    train_split: str = MISSING
    valid_split: str | None = MISSING
    urls: list[str] = field(default_factory=list)
    sha1: str = MISSING


@dataclass
class TextConfig(DataConfig):
    files: list[str] = field(default_factory=list)
    valid_files: list[str] = field(default_factory=list)


@dataclass
class HFConfig(DataConfig):
    name: str | None = MISSING  # a hub dataset, a builder (`text`, `json`) or a local folder
    config: str | None = MISSING
    revision: str | None = MISSING
    train_split: str = MISSING
    valid_split: str | None = MISSING
    text_column: str = MISSING


# Each corpus has its own keys: `data.source` picks the schema that types them
# (`config_compose.to_config`).
DATA_SCHEMAS = {"wikitext2": WikiText2Config, "text": TextConfig, "hf": HFConfig}


@dataclass
class TokenizerConfig:
    name: str = MISSING  # word | wordpiece
    lowercase: bool = MISSING
    min_freq: int = MISSING
    vocab_size: int | None = MISSING  # wordpiece: the vocabulary's size, reserved tokens included


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float | None = MISSING  # finetune: null picks one by the model's size
    weight_decay: float = MISSING
    betas: list[float] = field(default_factory=list)
    eps: float = MISSING
    schedule: str = MISSING
    warmup_steps: int = MISSING
    warmup_fraction: float = 0.0  # of max_steps, when warmup_steps is 0
    grad_clip: float = MISSING


@dataclass
class TrainerConfig:
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum: Any = MISSING  # "auto" (the plan picks it) or micro-steps per step
    memory_budget: str | None = MISSING  # e.g. 8GB; null = the device's available memory
    seed: int = MISSING
    device: str = MISSING
    log_every: int = MISSING
    eval_every: int = MISSING
    eval_batches: int = MISSING
    save_every: int = MISSING
    keep_last: int = MISSING
    resume: Any = MISSING  # false, true (newest checkpoint of the run dir) or a path
    skip_nonfinite: int = MISSING


@dataclass
class SpeedConfig:
    """What only changes speed and memory, never the recipe: free to change on resume."""

    precision: str = MISSING
    gradient_checkpointing: bool = MISSING
    num_workers: int = MISSING  # batches are the same in any process
    compile: bool = MISSING
    threads: int | None = MISSING


@dataclass
class Config:
    # A model to start from: a transformers BERT folder, a Hub name, or a run dir or
    # checkpoint of ours. Its architecture and vocabulary replace model.* and tokenizer.*.
    init: str | None = None
    model: ModelConfig = MISSING
    data: Any = MISSING  # one of DATA_SCHEMAS, chosen by data.source
    tokenizer: TokenizerConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    speed: SpeedConfig = MISSING


# GLUE's tasks, each a config of the `task` group; `task=csv` is the user's own
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


@dataclass
class TaskConfig:
    """A downstream task of `finetune`: one of GLUE's, read from `dir` in the layout GLUE
    distributes (or from the `datasets` library's copy when `dir` is null), or `csv`: the
    user's own TSV/CSV/JSONL files in `dir` with the named columns."""

    name: str = MISSING  # cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli or csv
    dir: str | None = MISSING  # the folder of train/dev/test files
    kind: str = MISSING  # classification or regression (GLUE's tasks fix it)
    text_a: str | None = MISSING  # csv: the column of the first text
    text_b: str | None = MISSING  # csv: the column of the second text (null: single text)
    label: str | None = MISSING  # csv: the column of the label


@dataclass
class FinetuneDataConfig:
    # <cls> a <sep> b <sep>, the longer text cut to fit; null: 128, or the pretrained
    # model's own max_len where that is shorter (positions past it were never trained)
    max_len: int | None = MISSING


@dataclass
class FinetuneTrainerConfig(TrainerConfig):
    epochs: int = MISSING  # max_steps = epochs x the train split's batches
    select: str = MISSING  # last or best: the epoch whose dev figures the summary reports


@dataclass
class FinetuneConfig:
    # The pretrained model: a run dir or checkpoint of ours, a transformers folder or a
    # Hub name. Null starts from random weights of `model`: the baseline to compare with.
    init: str | None = None
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    data: FinetuneDataConfig = MISSING
    tokenizer: TokenizerConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: FinetuneTrainerConfig = MISSING
    speed: SpeedConfig = MISSING


# The schema of each group but `data` (typed by its source, DATA_SCHEMAS).
GROUP_SCHEMAS = {
    "model": ModelConfig,
    "tokenizer": TokenizerConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "speed": SpeedConfig,
}


# The schema of each group of conf/finetune.yaml.
FINETUNE_SCHEMAS = {
    **GROUP_SCHEMAS,
    "task": TaskConfig,
    "data": FinetuneDataConfig,
    "trainer": FinetuneTrainerConfig,
}


def to_dict(cfg: Config | FinetuneConfig) -> dict:
    """Plain data for checkpoints and TensorBoard: no OmegaConf or dataclass objects."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
