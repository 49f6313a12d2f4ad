"""Setting a run up: the device, where training starts (fresh, `init=` or a checkpoint),
the data, the memory plan, the model, optimizer and schedule, and the speed settings.

Everything the loop then touches is one `Run`, listed here up front.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from bertpretrain import distributed
from bertpretrain.config import (
    Config,
    DataConfig,
    ModelConfig,
    SpeedConfig,
    TrainerConfig,
    to_dict,
)
from bertpretrain.data.pipeline import Dataset, load_on_every_rank
from bertpretrain.data.tokenizer import from_state as tokenizer_from_state
from bertpretrain.device import bf16_is_native, pick_device, resolve_precision
from bertpretrain.errors import UserError
from bertpretrain.init_from import init_weights
from bertpretrain.memory import allocator
from bertpretrain.memory.fit import for_run
from bertpretrain.memory.plan import Workload, check_split, configured_accum, micro_batch_size
from bertpretrain.model.attention import attention_path
from bertpretrain.model.bert import BertConfig, BertForPretraining, count_parameters, describe
from bertpretrain.training import checkpoint
from bertpretrain.training.objective import Objective, pretraining
from bertpretrain.training.optimize import PretrainingLosses, make_optimizer, make_scheduler
from bertpretrain.training.progress import open_writer
from bertpretrain.training.resume import resume_state

log = logging.getLogger("bertpretrain.train")


@dataclass(kw_only=True)  # sixteen fields: a positional call would be read by counting
class Run:
    """Everything the loop touches, built once by `set_up`."""

    cfg: Config
    run_dir: Path
    stop: list[int]  # signals received: the loop saves and stops after its step
    ranks: distributed.Ranks
    device: torch.device
    dataset: Any  # what it trains on: pretraining's `Dataset`, a task's `FinetuneData`
    objective: Objective  # what the loop optimises, validates and records
    model: torch.nn.Module  # the plain module: what checkpoints save
    module: torch.nn.Module  # what a step calls: the losses, compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    autocast: Callable[[], contextlib.AbstractContextManager]
    accum: int  # micro-steps per step, from the memory plan
    planned: int  # bytes the plan expects at the peak
    start: int  # the step training starts after
    writer: SummaryWriter | None  # rank 0's TensorBoard writer
    saved: list[Path] = field(default_factory=list)  # checkpoints, the newest last
    validated: dict = field(default_factory=dict)  # the last validation, in every checkpoint
    skipped: int = 0  # steps skipped for a non-finite loss


def set_up(
    cfg: Config,
    run_dir: Path,
    stop: list[int],
    accepted: Callable[[], None],
    init_path: Path | None = None,
) -> Run:
    """Everything before the first step. `accepted()` runs once the run dir, the resume
    and the corpus are checked: from then on the run's log and record go to run_dir.
    `init_path`: the model `init=` names, its architecture already in cfg.model."""
    ranks = distributed.ranks()
    torch.manual_seed(cfg.trainer.seed)
    device = run_device(cfg.trainer, ranks)
    apply_threads(cfg.speed)
    resume = resume_state(cfg.trainer.resume, to_dict(cfg), run_dir)
    init_model, init_tokenizer = None, None
    if init_path is not None and resume is None:
        init_model, init_tokenizer = from_published(init_path)
    given = tokenizer_from_state(resume) if resume is not None else init_tokenizer
    dataset = load_on_every_rank(cfg.data, cfg.tokenizer, cfg.trainer.seed, given)
    _check_corpus(resume, dataset)
    if ranks.main:
        accepted()
    _log_data(cfg.data, cfg.tokenizer.name, dataset)
    work = Workload(cfg.model, cfg.trainer, cfg.speed, cfg.optim, cfg.data.max_len)
    accum, planned = for_run(work, dataset, device, ranks.world)
    model = _model(cfg.model, cfg.speed, resume, init_model, len(dataset.vocab)).to(device)
    del init_model

    def objective(autocast, micro: int) -> Objective:
        return pretraining(
            dataset,
            cfg.trainer.batch_size,
            cfg.trainer.seed,
            cfg.data.masking == "dynamic",
            model,
            (micro, cfg.trainer.eval_batches * accum),  # validation in the planned micro-batch
            device,
            autocast,
        )

    parts = Parts(ranks, device, dataset, model, PretrainingLosses(model), accum, planned)
    return assemble(cfg, run_dir, stop, parts, resume, objective)


@dataclass
class Parts:  # what an objective's set-up built, for `assemble`
    ranks: distributed.Ranks
    device: torch.device
    data: Any
    model: torch.nn.Module
    losses: torch.nn.Module  # the losses as a module of the model (`make_module`)
    accum: int
    planned: int


def assemble(
    cfg,
    run_dir: Path,
    stop: list[int],
    parts: Parts,
    resume: dict | None,
    objective: Callable[[Callable, int], Objective],
) -> Run:
    """What every objective's set-up ends with, once its data and model exist: the
    optimizer and schedule (restored on a resume), the ranks' seeds, TensorBoard, autocast,
    and `objective(autocast, micro_batch)`."""
    ranks, model = parts.ranks, parts.model
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.trainer.max_steps)
    start = _restore(resume, model, optimizer, scheduler)
    if ranks.rank > 0:  # the same weights everywhere, but each rank its own dropout masks
        torch.manual_seed(cfg.trainer.seed + 1_000_003 * ranks.rank + start)
    # Steps up to `start` were logged by the interrupted run; drop anything it logged later
    # (everything, when a killed run left no checkpoint and we start again from 0).
    writer = open_writer(run_dir / "tensorboard", purge_step=start + 1) if ranks.main else None
    autocast = autocast_for(cfg.speed, parts.device, model.config)
    micro = micro_batch_size(cfg.trainer.batch_size, ranks.world, parts.accum)
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        stop=stop,
        ranks=ranks,
        device=parts.device,
        dataset=parts.data,
        objective=objective(autocast, micro),
        model=model,
        module=make_module(cfg.speed, parts.losses, parts.device, ranks),
        optimizer=optimizer,
        scheduler=scheduler,
        autocast=autocast,
        accum=parts.accum,
        planned=parts.planned,
        start=start,
        writer=writer,
        saved=checkpoint.list_checkpoints(run_dir)[-1:],
    )


def apply_threads(speed: SpeedConfig) -> None:
    """speed.threads for torch's CPU kernels, process-wide; null leaves torch's default."""
    if speed.threads is not None:
        torch.set_num_threads(speed.threads)
        log.info("speed.threads=%d: torch uses %d CPU threads", speed.threads, speed.threads)


def run_device(trainer: TrainerConfig, ranks: distributed.Ranks) -> torch.device:
    """The device, each rank its own GPU; the batch must split evenly over the ranks."""
    device = pick_device(trainer.device)
    allocator.keep_freed_pages(device)
    if device.type == "cuda":
        # fp32 matmuls (the fp32 parts under autocast, and precision=fp32) on tensor cores
        # in TF32: BERT's pretraining is insensitive to its 10-bit mantissa.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    check_split(trainer.batch_size, ranks.world, configured_accum(trainer))
    return device


def from_published(path: Path):
    model, tokenizer = init_weights(path)
    log.info(
        "starting from %s: its weights and its vocabulary of %d tokens (tokenizer.* is not "
        "used); a fresh optimizer and schedule",
        path,
        len(tokenizer.vocab),
    )
    return model, tokenizer


def _check_corpus(resume: dict | None, dataset: Dataset) -> None:
    digest = dataset.corpus_digest
    if resume is not None and resume.get("corpus_digest", digest) != digest:
        raise UserError(
            "the checkpoint was trained on another corpus (its training split's bytes differ); "
            "resume with the same data settings"
        )


def _log_data(data_cfg: DataConfig, tokenizer: str, dataset: Dataset) -> None:
    """What the run trains on; `tokenizer` is tokenizer.name."""
    if data_cfg.whole_word_mask and tokenizer == "word":
        log.warning(
            "data.whole_word_mask=true changes nothing with tokenizer=word: every token is a word"
        )
    max_len = data_cfg.max_len
    tokens = float(dataset.train.valid_lens.mean())  # real tokens per example
    valid = dataset.valid
    log.info(
        "data: %d training examples (%s pairing), %d validation examples, vocabulary of %d; "
        "real tokens per example %.1f of %d (fill %.2f)%s",
        len(dataset.train),
        data_cfg.pairing,
        len(valid) if valid is not None else 0,
        len(dataset.vocab),
        tokens,
        max_len,
        tokens / max_len,
        f", validation fill {valid.valid_lens.mean() / max_len:.2f}" if valid is not None else "",
    )


def _model(
    model_cfg: ModelConfig,
    speed: SpeedConfig,
    resume: dict | None,
    init_model: BertForPretraining | None,
    vocab_size: int,
) -> BertForPretraining:
    """A resumed checkpoint's own architecture (activation and eps included), the
    published model of `init=`, or a fresh model of model_cfg's architecture."""
    if resume is not None:
        model = BertForPretraining(BertConfig(**resume["model_config"]))
    else:
        model = init_model or BertForPretraining(model_cfg.architecture(vocab_size))
    model.bert.gradient_checkpointing = speed.gradient_checkpointing
    log.info("model %s: %s", model_cfg.name, describe(model.config, count_parameters(model)))
    return model


def _restore(resume: dict | None, model, optimizer, scheduler) -> int:
    """Load a checkpoint's weights and state; the step it reached (0 for a new run)."""
    if resume is None:
        return 0
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    checkpoint.set_rng_state(resume["rng"])
    return resume["step"]


def make_module(speed: SpeedConfig, losses: torch.nn.Module, device, ranks) -> torch.nn.Module:
    """The losses as a module (`PretrainingLosses`, `ClassifierLoss`), compiled if asked;
    under torchrun wrapped by DDP, which syncs gradients only for what goes through the
    wrapped module's forward."""
    if speed.compile:
        log.info("speed.compile=true: compiling the model (the first steps take longer)")
        if device.type == "cpu":  # measured: docs/benchmarks.md, "The speed group"
            log.warning("speed.compile=true on the CPU: speed.compile=false is faster there")
    module = torch.compile(losses) if speed.compile else losses
    if ranks.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    return module


def autocast_for(
    speed: SpeedConfig, device: torch.device, architecture: BertConfig
) -> Callable[[], contextlib.AbstractContextManager]:
    """Autocast as speed.precision resolves on `device`; the log says which precision and
    which attention kernel that gives."""
    precision = resolve_precision(speed.precision, device.type)
    if speed.precision == "auto":
        native = "native" if precision == "bf16" else "not native"
        log.info(
            "precision: %s (speed.precision=auto; bf16 is %s on %s)", precision, native, device
        )
    elif precision == "bf16" and not bf16_is_native(device):
        log.warning(
            "speed.precision=bf16 on a device without bf16 instructions (%s, %s) is emulated "
            "and much slower than fp32; use fp32 or auto here",
            device,
            torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else "no bf16",
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    log.info(attention_path(architecture, device, dtype))
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype != torch.float32)
