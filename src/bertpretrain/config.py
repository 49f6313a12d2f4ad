"""Typed schemas for the YAML in conf/, registered in Hydra's ConfigStore.

The YAML holds every default; the dataclasses here only fix names and types, so an
unknown key or a wrong type fails while Hydra composes the config. `check` adds the
rules a type cannot express (positive sizes, hidden divisible by heads, ...).
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bertpretrain.errors import UserError


@dataclass
class ModelConfig:
    name: str = MISSING
    num_layers: int = MISSING
    hidden_size: int = MISSING
    num_heads: int = MISSING
    ffn_size: int = MISSING
    dropout: float = MISSING
    max_position: int = MISSING
    gradient_checkpointing: bool = MISSING


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


# Each corpus has its own keys: `data.source` picks the schema that types them (`to_config`).
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
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = field(default_factory=list)
    eps: float = MISSING
    schedule: str = MISSING
    warmup_steps: int = MISSING
    grad_clip: float = MISSING


@dataclass
class TrainerConfig:
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum: Any = MISSING  # "auto" (the plan picks it) or micro-steps per step
    memory_budget: str | None = MISSING  # e.g. 8GB; null = the device's available memory
    seed: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    num_workers: int = MISSING  # speed only: batches are the same in any process
    log_every: int = MISSING
    eval_every: int = MISSING
    eval_batches: int = MISSING
    save_every: int = MISSING
    keep_last: int = MISSING
    resume: Any = MISSING  # false, true (newest checkpoint of the run dir) or a path
    skip_nonfinite: int = MISSING


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


def register_configs() -> None:
    """Make the schema available to config.yaml's defaults list as `base_config`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


def conf_dir() -> Path:
    """The folder holding config.yaml: inside the package in a wheel, else the repo's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UserError(f"cannot find the bertpretrain configs next to {here}; reinstall the package")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check(cfg: Config) -> None:
    """Reject values that type-check but cannot work, before any data is read."""
    m, d, o, t, k = cfg.model, cfg.data, cfg.optim, cfg.trainer, cfg.tokenizer
    for key, value in [
        ("model.num_layers", m.num_layers),
        ("model.hidden_size", m.hidden_size),
        ("model.num_heads", m.num_heads),
        ("model.ffn_size", m.ffn_size),
        ("model.max_position", m.max_position),
        ("trainer.max_steps", t.max_steps),
        ("trainer.batch_size", t.batch_size),
        ("trainer.log_every", t.log_every),
        ("trainer.keep_last", t.keep_last),
        ("data.min_freq", d.min_freq),
        ("tokenizer.min_freq", k.min_freq),
    ]:
        _require(value > 0, f"{key}={value} must be a positive integer")
    for key, value in [
        ("trainer.eval_every", t.eval_every),
        ("trainer.eval_batches", t.eval_batches),
        ("trainer.save_every", t.save_every),
        ("optim.warmup_steps", o.warmup_steps),
        ("trainer.seed", t.seed),
        ("trainer.skip_nonfinite", t.skip_nonfinite),
        ("trainer.num_workers", t.num_workers),
    ]:
        _require(value >= 0, f"{key}={value} must be >= 0 (0 means: see conf/trainer/default.yaml)")
    _require(
        m.hidden_size % m.num_heads == 0,
        f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}; "
        "pick a head count that divides the hidden size",
    )
    _check_accum(t)
    _require(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1)")
    _require(
        d.max_len >= 5, f"data.max_len={d.max_len} is too short: an example needs at least 5 tokens"
    )
    _require(
        d.max_len <= m.max_position,
        f"data.max_len={d.max_len} exceeds the model's position table ({m.max_position}); "
        f"use data.max_len<={m.max_position} or raise model.max_position",
    )
    _require(
        d.masking in ("static", "dynamic"),
        f"data.masking={d.masking!r} is unknown; use static or dynamic",
    )
    _require(
        d.pairing in ("d2l", "bert"),
        f"data.pairing={d.pairing!r} is unknown; use d2l (the reference) or bert "
        "(google-research/bert's create_pretraining_data.py)",
    )
    _require(
        0.0 <= d.short_seq_prob <= 1.0,
        f"data.short_seq_prob={d.short_seq_prob} must be in [0, 1] (BERT's is 0.1)",
    )
    _check_data(d)
    _check_tokenizer(k)
    _require(o.name in ("adam", "adamw"), f"optim.name={o.name!r} is unknown; use adam or adamw")
    _require(o.lr > 0, f"optim.lr={o.lr} must be positive, e.g. optim.lr=1e-3")
    _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
    _require(o.eps > 0, f"optim.eps={o.eps} must be positive")
    _require(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")
    _require(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        f"optim.betas={list(o.betas)} must be two numbers in [0, 1), e.g. [0.9,0.999]",
    )
    _require(
        o.schedule in ("constant", "linear"),
        f"optim.schedule={o.schedule!r} is unknown; use constant or linear",
    )
    _require(
        t.precision in ("fp32", "bf16"),
        f"trainer.precision={t.precision!r} is unknown; use fp32 or bf16",
    )
    _require(
        t.device == "auto" or t.device.split(":")[0] in ("cpu", "cuda", "mps"),
        f"trainer.device={t.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps",
    )
    _require(
        isinstance(t.resume, (bool, str)),
        f"trainer.resume={t.resume!r} must be true, false or a checkpoint path",
    )


def _check_accum(t: TrainerConfig) -> None:
    if t.grad_accum == "auto":
        pass
    else:
        _require(
            isinstance(t.grad_accum, int)
            and not isinstance(t.grad_accum, bool)
            and t.grad_accum > 0,
            f"trainer.grad_accum={t.grad_accum!r} must be auto or a positive integer",
        )
        _require(
            t.batch_size % t.grad_accum == 0,
            f"trainer.batch_size={t.batch_size} is not a multiple of "
            f"trainer.grad_accum={t.grad_accum}",
        )
    if t.memory_budget is not None:
        parse_size(t.memory_budget, "trainer.memory_budget=")


def parse_size(text: object, what: str) -> int:
    """Bytes from `80GB` (decimal), `80GiB` or `80G` (binary), or a plain number of bytes;
    `what` names the setting in the error (`trainer.memory_budget=`)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?b)?)?\s*", str(text), re.IGNORECASE)
    size = 0
    if match:
        number, prefix, unit = match.groups()
        base = 1000 if unit is not None and unit.lower() == "b" else 1024
        power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
        size = int(float(number) * base**power)
    if size <= 0:
        raise UserError(
            f"{what}{text!r} is not a size; use e.g. 8GB (decimal), 8GiB or 8G (binary), or "
            "a byte count"
        )
    return size


def _check_data(d: DataConfig) -> None:
    _require(
        isinstance(d, tuple(DATA_SCHEMAS.values())),
        f"data.source={d.source!r} has no schema; use data=wikitext2, data=text or data=hf",
    )
    if isinstance(d, TextConfig):
        _require(
            len(d.files) > 0,
            "data=text needs its files: data.files=[a.txt,b.txt] (one paragraph per line)",
        )
    if isinstance(d, HFConfig):
        _require(
            bool(d.name),
            "data=hf needs a dataset: data.name=Salesforce/wikitext "
            "data.config=wikitext-103-raw-v1, or data.name=PATH for a folder of text files",
        )


def _check_tokenizer(k: TokenizerConfig) -> None:
    _require(
        k.name in ("word", "wordpiece"),
        f"tokenizer.name={k.name!r} is unknown; use tokenizer=word or tokenizer=wordpiece",
    )
    if k.name == "wordpiece":
        _require(
            k.vocab_size is not None and k.vocab_size > 5,
            f"tokenizer.vocab_size={k.vocab_size} is too small for WordPiece; "
            "use e.g. tokenizer.vocab_size=30522 (BERT's) or 8000 for a small corpus",
        )


def to_config(cfg: DictConfig) -> Config:
    """Turn Hydra's composed DictConfig into the typed, checked Config."""
    _check_known_keys(cfg)
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):  # composed without the schema (e.g. a user's own config)
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))
    obj.data = _typed_data(cfg.data)
    check(obj)
    return obj


def _check_known_keys(cfg: DictConfig) -> None:
    """`+trainer.max_step=1` adds a key that no code reads; a misspelt key must fail."""
    groups = {f.name: f.type for f in fields(Config)}
    schemas = {
        "model": ModelConfig,
        "tokenizer": TokenizerConfig,
        "optim": OptimConfig,
        "trainer": TrainerConfig,
        "data": DATA_SCHEMAS.get(cfg.get("data", {}).get("source")),
    }
    unknown = [k for k in cfg if k not in groups and k != "hydra"]
    for group, schema in schemas.items():
        node = cfg.get(group)
        if schema is not None and isinstance(node, DictConfig):
            known = {f.name for f in fields(schema)}
            unknown += [f"{group}.{k}" for k in node if k not in known]
    if unknown:
        key = unknown[0]
        group, _, name = key.rpartition(".")
        known = [f.name for f in fields(schemas[group])] if group in schemas else list(groups)
        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"did you mean {group + '.' if group else ''}{close[0]}?"
            if close
            else (f"the keys of {group or 'the config'} are: {', '.join(known)}")
        )
        raise UserError(f"bad config: {key} is not a setting; {hint}")


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of each job of a `-m` sweep, as Hydra's basic sweeper expands them
    (the product of every comma list and range). A sweep it cannot expand here (a glob, or
    another sweeper's syntax) gives no jobs: each is then checked when it starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = []
        for override in parsed:
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices.append([override.input_line])
            elif override.is_discrete_sweep() and override.value_type.name != "GLOB_CHOICE_SWEEP":
                choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
            else:
                return []
    except HydraException as e:
        raise UserError(f"bad override: {_one_line(e)}{_quoting_hint(overrides, e)}") from None
    return [list(job) for job in itertools.product(*choices)]


def _quoting_hint(overrides: list[str], e: BaseException) -> str:
    """Hydra's override grammar takes non-ASCII characters only inside quotes."""
    if "Lexer" not in f"{type(e).__name__} {e}":
        return ""
    odd = next((o for o in overrides if not o.isascii()), None)
    if odd is None:
        return ""
    key, _, value = odd.partition("=")
    return f"; quote a value with non-ASCII characters: '{key}=\"{value}\"'"


def _typed_data(data: DictConfig) -> DataConfig:
    """The data node typed by its source's schema. The schemas are not options of the
    `data` group (Hydra's --help would list them as corpora), so they apply here: a key of
    another corpus or a wrong type fails as it would at composition."""
    source = data.get("source")
    schema = DATA_SCHEMAS.get(source)
    if schema is None:
        raise UserError(
            f"data.source={source!r} is unknown; use data=wikitext2, data=text or data=hf"
        )
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"bad config: data.{key}: {problem} (data={source}, {schema.__name__})"
        ) from None


def without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment", "To append")
_PLACEHOLDERS = ("$VALUE", "$KEY", "$FULL_KEY")  # OmegaConf's message templates, unfilled


def _one_line(e: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines; keep what names the problem."""
    parts = []
    while e is not None and len(parts) < 3:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        for ln in lines:
            if ln.startswith("Config search path"):
                break  # what follows lists Hydra's internals, not the user's mistake
            if ln.startswith(_NOISE) or any(p in ln for p in _PLACEHOLDERS):
                continue
            if ln not in parts:
                parts.append(ln)
        e = e.__cause__ or e.__context__
    return " ".join(parts) or "invalid configuration"


def compose(overrides: list[str], config_name: str = "config") -> tuple[Config, DictConfig]:
    """conf/ composed with `overrides` as `train` would (the hydra node included), and its
    typed, checked Config. Hydra's multi-line composition errors become one UserError line
    (HYDRA_FULL_ERROR=1 keeps the original exception)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=overrides, return_hydra_config=True
            )
        return to_config(without_hydra(cfg)), cfg
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise UserError(
            f"bad config: {_one_line(e)}{_quoting_hint(overrides, e)}; see "
            "`bertpretrain train --help` for the groups and keys"
        ) from None


def to_dict(cfg: Config) -> dict:
    """Plain data for checkpoints and TensorBoard: no OmegaConf or dataclass objects."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
