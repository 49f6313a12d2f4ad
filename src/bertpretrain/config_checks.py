"""The rules a type cannot express: every number within its range (config_ranges.RANGES),
hidden size divisible by heads, known names. Each broken rule is one UserError line naming
the setting and a value that works.

It reads the schemas' fields only; `config_compose.to_config` calls `check` on every
config it composes.
"""

from __future__ import annotations

import re

from bertpretrain.config import (
    GLUE_TASKS,
    Config,
    DataConfig,
    FinetuneConfig,
    FinetuneTrainerConfig,
    ModelConfig,
    OptimConfig,
    SpeedConfig,
    TaskConfig,
    TokenizerConfig,
    TrainerConfig,
)
from bertpretrain.config_ranges import RANGES, check_ranges
from bertpretrain.errors import UserError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check(cfg: Config | FinetuneConfig) -> None:
    """Reject values that type-check but cannot work, before any data is read."""
    finetune = isinstance(cfg, FinetuneConfig)
    derived = {"trainer.max_steps"} if finetune else set()  # from trainer.epochs
    check_ranges({key: _setting(cfg, key) for key in RANGES if _has(cfg, key) - derived})
    _check_model(cfg.model, cfg.data)
    _check_tokenizer(cfg.tokenizer)
    _check_optim(cfg.optim)
    _check_trainer(cfg.trainer)
    _check_speed(cfg.speed)
    if finetune:
        _check_task(cfg.task, cfg.trainer)
    else:
        _check_data(cfg.data)
        _require(
            cfg.optim.lr is not None, "optim.lr=null: give pretraining a learning rate, e.g. 1e-3"
        )


def _has(cfg, key: str) -> set[str]:
    """{key} when cfg's schema has that setting (fine-tuning's data has max_len alone)."""
    group, name = key.split(".")
    return {key} if hasattr(getattr(cfg, group), name) else set()


def _setting(cfg, key: str) -> object:
    group, name = key.split(".")
    return getattr(getattr(cfg, group), name)


def _check_task(task: TaskConfig, trainer: FinetuneTrainerConfig) -> None:
    known = (*GLUE_TASKS, "csv")
    _require(
        task.name in known,
        f"task.name={task.name!r} is unknown; use task={' or task='.join(known)}",
    )
    _require(
        task.kind in ("classification", "regression"),
        f"task.kind={task.kind!r} is unknown; use classification or regression",
    )
    _require(
        trainer.select in ("last", "best"),
        f"trainer.select={trainer.select!r} is unknown; use last or best",
    )


def _check_model(model: ModelConfig, data: DataConfig) -> None:
    _require(
        model.vocab_size is None,
        f"model.vocab_size={model.vocab_size}: the vocabulary's size comes from the "
        "tokenizer; set tokenizer.vocab_size (WordPiece) instead",
    )
    _require(
        model.hidden_size % model.num_heads == 0,
        f"model.hidden_size={model.hidden_size} is not divisible by "
        f"model.num_heads={model.num_heads}; pick a head count that divides the hidden size",
    )
    _require(
        data.max_len is None or data.max_len <= model.max_position,
        f"data.max_len={data.max_len} exceeds the model's position table "
        f"({model.max_position}); use data.max_len<={model.max_position} or raise "
        "model.max_position",
    )


def _check_optim(optim: OptimConfig) -> None:
    _require(
        optim.name in ("adam", "adamw"), f"optim.name={optim.name!r} is unknown; use adam or adamw"
    )
    _require(
        len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas),
        f"optim.betas={list(optim.betas)} must be two numbers in [0, 1), e.g. [0.9,0.999]",
    )
    _require(
        optim.schedule in ("constant", "linear"),
        f"optim.schedule={optim.schedule!r} is unknown; use constant or linear",
    )


def _check_trainer(trainer: TrainerConfig) -> None:
    _check_accum(trainer)
    _require(
        trainer.device == "auto" or trainer.device.split(":")[0] in ("cpu", "cuda", "mps"),
        f"trainer.device={trainer.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps",
    )
    _require(
        isinstance(trainer.resume, (bool, str)),
        f"trainer.resume={trainer.resume!r} must be true, false or a checkpoint path",
    )


def _check_speed(speed: SpeedConfig) -> None:
    _require(
        speed.precision in ("auto", "fp32", "bf16"),
        f"speed.precision={speed.precision!r} is unknown; use auto, fp32 or bf16",
    )


def _check_accum(trainer: TrainerConfig) -> None:
    accum = trainer.grad_accum
    if accum != "auto":
        _require(
            isinstance(accum, int) and not isinstance(accum, bool) and accum > 0,
            f"trainer.grad_accum={accum!r} must be auto or a positive integer",
        )
        _require(
            trainer.batch_size % accum == 0,
            f"trainer.batch_size={trainer.batch_size} is not a multiple of "
            f"trainer.grad_accum={accum}",
        )
    if trainer.memory_budget is not None:
        parse_size(trainer.memory_budget, "trainer.memory_budget=")


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


def _check_data(data: DataConfig) -> None:
    _require(
        data.masking in ("static", "dynamic"),
        f"data.masking={data.masking!r} is unknown; use static or dynamic",
    )
    _require(
        data.pairing in ("d2l", "bert"),
        f"data.pairing={data.pairing!r} is unknown; use d2l (the reference) or bert "
        "(google-research/bert's create_pretraining_data.py)",
    )
    if data.source == "text":
        _require(
            len(data.files) > 0,
            "data=text needs its files: data.files=[a.txt,b.txt] (one paragraph per line)",
        )
    if data.source == "hf":
        _require(
            bool(data.name),
            "data=hf needs a dataset: data.name=Salesforce/wikitext "
            "data.config=wikitext-103-raw-v1, or data.name=PATH for a folder of text files",
        )


def _check_tokenizer(tokenizer: TokenizerConfig) -> None:
    _require(
        tokenizer.name in ("word", "wordpiece"),
        f"tokenizer.name={tokenizer.name!r} is unknown; use tokenizer=word or tokenizer=wordpiece",
    )
    if tokenizer.name == "wordpiece":
        _require(
            tokenizer.vocab_size is not None,
            f"tokenizer.vocab_size={tokenizer.vocab_size} is too small for WordPiece; "
            "use e.g. tokenizer.vocab_size=30522 (BERT's) or 8000 for a small corpus",
        )
