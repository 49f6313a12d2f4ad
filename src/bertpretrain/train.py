"""The training loop: one readable function from config to checkpoints.

`train(cfg, run_dir)` is plain Python: Hydra (cli.py) only chooses the config and the run
dir, so tests and notebooks call it directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from bertpretrain import checkpoint, data, distributed, plan, published, rundir
from bertpretrain.config import Config, OptimConfig, to_dict
from bertpretrain.data.batches import BatchStream, batch_loader
from bertpretrain.data.examples import Dataset
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.tokenizer import from_state as tokenizer_from_state
from bertpretrain.device import bf16_is_native, pick_device
from bertpretrain.errors import Interrupted, UserError
from bertpretrain.evaluate import COLLAPSED, evaluate
from bertpretrain.model import (
    BertConfig,
    BertForPretraining,
    count_parameters,
    describe,
    flops_per_sequence,
)

log = logging.getLogger(__name__)


def make_model(cfg: Config, vocab_size: int) -> BertForPretraining:
    m = cfg.model
    return BertForPretraining(
        BertConfig(
            vocab_size=vocab_size,
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            num_heads=m.num_heads,
            ffn_size=m.ffn_size,
            dropout=m.dropout,
            max_position=m.max_position,
        )
    )


def make_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """Adam (the reference) or AdamW; weight decay skips biases and LayerNorm, as in BERT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, foreach=True)


def lr_factor(o: OptimConfig, max_steps: int):
    """Linear warmup, then constant or linear decay to zero at max_steps."""

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "linear":
            return max(0.0, (max_steps - step) / max(1, max_steps - o.warmup_steps))
        return 1.0

    return factor


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_state(cfg: Config, run_dir: Path) -> dict | None:
    """The checkpoint to continue, checked to continue the same run; None to start anew."""
    resume = cfg.trainer.resume
    if resume is False:
        return None
    if resume is True:
        found = checkpoint.list_checkpoints(run_dir)
        if not found:
            log.info(
                "trainer.resume=true but %s has no checkpoint yet: starting from step 0", run_dir
            )
            return None
        path = found[-1]
    else:
        path = checkpoint.resolve(resume)
    state = checkpoint.load(path)
    try:
        checkpoint.check_resume(path, state, to_dict(cfg))
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path} has no usable config or step ({type(e).__name__}: {e}); resume from a "
            "checkpoint written by `bertpretrain train`"
        ) from None
    log.info("resuming from %s (step %d)", path, state["step"])
    return state


def load_data(cfg: Config, resume: dict | None, init: Tokenizer | None = None) -> Dataset:
    """The run's tokenizer and examples.

    A resumed run keeps its checkpoint's tokenizer, a run started from `init=` that
    model's. Under torchrun rank 0 builds first and the other ranks take its tokenizer:
    WordPiece training is not reproducible bit for bit, and every rank must share one
    vocabulary.
    """
    ranks = distributed.ranks()
    given = tokenizer_from_state(resume) if resume is not None else init
    if cfg.data.whole_word_mask and cfg.tokenizer.name == "word":
        log.warning(
            "data.whole_word_mask=true changes nothing with tokenizer=word: every token is a word"
        )
    if ranks.world == 1 or given is not None:
        dataset = data.load(cfg.data, cfg.tokenizer, cfg.trainer.seed, given)
    elif ranks.main:
        try:
            dataset = data.load(cfg.data, cfg.tokenizer, cfg.trainer.seed)
        except BaseException:
            distributed.broadcast_str("")  # releases the other ranks, which stop too
            raise
        tok = dataset.tokenizer
        distributed.broadcast_str(json.dumps(tok.settings() | {"vocab": tok.vocab}))
    else:
        shared = distributed.broadcast_str(None)
        if not shared:
            raise UserError("rank 0 could not build the data; its log says why")
        dataset = data.load(
            cfg.data, cfg.tokenizer, cfg.trainer.seed, tokenizer_from_state(json.loads(shared))
        )
    if (
        resume is not None
        and resume.get("corpus_digest", dataset.corpus_digest) != dataset.corpus_digest
    ):
        raise UserError(
            "the checkpoint was trained on another corpus (its training split's bytes differ); "
            "resume with the same data settings"
        )
    return dataset


def plan_memory(cfg: Config, dataset: Dataset, device: torch.device, ranks) -> tuple[int, int]:
    """The accumulation to train with and the bytes it is planned to take.

    Planned once the data is built, so the real vocabulary and real-token fill are known
    and the process's own memory (the corpus included) is counted, and before the model
    exists: a config that cannot fit stops here, in one line, before anything large is
    allocated (on a CPU the kernel would kill the process without a word).
    """
    fill = float(dataset.train.valid_lens.mean()) / cfg.data.max_len
    budget, source = plan.memory_budget(cfg, device)
    overhead = plan.process_overhead(device.type)
    accum, chosen = plan.choose_accum(
        cfg, len(dataset.vocab), fill, device.type, budget, source, ranks.world, overhead
    )
    log.info(
        "memory plan: %d micro-step(s) of %d sequences%s need %s; %s allows %s (real-token "
        "fill %.2f)",
        accum,
        chosen.micro_batch,
        " (trainer.grad_accum=auto)" if cfg.trainer.grad_accum == "auto" else "",
        plan.format_size(chosen.total),
        source,
        plan.format_size(plan.MARGIN * budget),
        fill,
    )
    return accum, chosen.total


def _log_line(step: int, max_steps: int, mlm: float, nsp: float, seq_s: float) -> str:
    return f"step {step}/{max_steps}  mlm {mlm:.4f}  nsp {nsp:.4f}  {seq_s:.1f} seq/s"


class PretrainingLosses(torch.nn.Module):
    """The model's losses as a forward(), because DistributedDataParallel syncs gradients
    only for what goes through the wrapped module's forward."""

    def __init__(self, model: BertForPretraining):
        super().__init__()
        self.model = model

    def forward(self, batch, mlm_count=None, nsp_count=None):
        return self.model.losses(batch, mlm_count, nsp_count)


def split_batch(batch: dict, accum: int) -> list[dict]:
    """A rank's share of the batch cut into `accum` equal micro-batches."""
    size = len(batch["nsp_labels"]) // accum
    return [{k: v[m * size : (m + 1) * size] for k, v in batch.items()} for m in range(accum)]


def training_step(
    module,
    optimizer,
    micro_batches,
    autocast,
    grad_clip: float,
    counts=(None, None),
    stopping: Callable[[], bool] = lambda: False,
):
    """Forward and backward every micro-batch, clip, update.

    Returns the (mlm, nsp) loss of this rank's share and whether every loss was finite. A
    non-finite loss on any rank leaves the weights untouched on all of them; the caller
    decides whether to stop. `counts` are the global batch's (masked positions, examples),
    so micro-batch losses add up to the global batch mean exactly. When `stopping()` turns
    true between micro-batches (a step of many can take minutes), the step is dropped
    with the weights untouched and the losses are None.
    """
    optimizer.zero_grad(set_to_none=True)
    device = micro_batches[0]["tokens"].device
    total = torch.zeros(2, device=device)
    # Each rank's loss is its share of the global mean, so the global gradient is the *sum*
    # of the ranks' gradients; DistributedDataParallel averages them instead. Scaling by
    # the world size undoes its division, so the update matches one process for any
    # optimizer (Adam's eps, clipping and weight decay all see the gradient's scale).
    world = distributed.ranks().world
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = (
            contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()
        )
        with sync:
            with autocast():
                mlm, nsp = module(mb, *counts)
            loss = mlm + nsp
            # one agreement per micro-batch, as every rank must take the same branch
            nonfinite, stop = distributed.any_rank_each(
                [not bool(torch.isfinite(loss)), not last and stopping()], device
            )
            if nonfinite or stop:
                optimizer.zero_grad(set_to_none=True)
                return (None if stop and not nonfinite else total), False
            (loss * world).backward()
        total += torch.stack([mlm.detach(), nsp.detach()]).float()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    return total, True


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """SIGINT/SIGTERM only note the signal: the loop finishes its step, saves and stops.

    A second SIGINT while stopping interrupts at once (the user insists).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def note(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        # Nothing else here, logging included: the signal may land while the main thread is
        # inside a log handler's write to the same buffered file, and a second write from
        # the handler fails ("reentrant call"). The loop logs it after the step.
        received.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(cfg: Config, run_dir: Path, record: Callable[[], None] | None = None) -> dict:
    """Pretrain BERT as `cfg` says, writing TensorBoard logs and checkpoints into run_dir.

    Under torchrun every rank calls this; rank 0 alone logs, evaluates and saves. Nothing
    is written into run_dir before its lock is held and the run is accepted (the run dir,
    the resume and the corpus checked): then the log so far goes to train.log, and
    `record` (the CLI's writer of Hydra's config record) runs.
    """
    main = distributed.ranks().main
    lock = checkpoint.run_lock(run_dir) if main else contextlib.nullcontext()
    with lock, stop_requests() as stop:
        distributed.check_on_rank_zero(lambda: rundir.check_new_run(run_dir, cfg.trainer.resume))
        with rundir.log_file(run_dir, main) as log_to_file:

            def accepted() -> None:
                log_to_file()
                if record is not None:
                    record()

            try:
                return _train(cfg, run_dir, stop, accepted)
            except torch.OutOfMemoryError:
                raise UserError(plan.oom_advice(cfg, pick_device(cfg.trainer.device))) from None


def _train(cfg: Config, run_dir: Path, stop: list[int], accepted: Callable[[], None]) -> dict:
    t = cfg.trainer
    ranks = distributed.ranks()
    torch.manual_seed(t.seed)
    device = pick_device(t.device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    fixed_accum = t.grad_accum if isinstance(t.grad_accum, int) else 1
    if t.batch_size % (ranks.world * fixed_accum):
        raise UserError(
            f"trainer.batch_size={t.batch_size} does not split into {ranks.world} ranks x "
            f"{fixed_accum} micro-steps (trainer.grad_accum); use a multiple of "
            f"{ranks.world * fixed_accum}"
        )
    init_path = published.adopt_architecture(cfg)[0] if cfg.init else None
    resume = _resume_state(cfg, run_dir)
    init_model, init_tokenizer = None, None
    if init_path is not None and resume is None:
        init_model, init_tokenizer = published.init_weights(init_path)
        log.info(
            "starting from %s: its weights and its vocabulary of %d tokens (tokenizer.* is not "
            "used); a fresh optimizer and schedule",
            init_path,
            len(init_tokenizer.vocab),
        )

    dataset = load_data(cfg, resume, init_tokenizer)
    if ranks.main:
        accepted()  # the run continues or starts this dir: its log and record go there now
    tokens = float(dataset.train.valid_lens.mean())  # real tokens per example
    log.info(
        "data: %d training examples (%s pairing), %d validation examples, vocabulary of %d; "
        "real tokens per example %.1f of %d (fill %.2f)%s",
        len(dataset.train),
        cfg.data.pairing,
        len(dataset.valid) if dataset.valid is not None else 0,
        len(dataset.vocab),
        tokens,
        cfg.data.max_len,
        tokens / cfg.data.max_len,
        f", validation fill {dataset.valid.valid_lens.mean() / cfg.data.max_len:.2f}"
        if dataset.valid is not None
        else "",
    )
    accum, planned = plan_memory(cfg, dataset, device, ranks)

    if resume is not None:  # the checkpoint's own architecture, activation and eps included
        model = BertForPretraining(BertConfig(**resume["model_config"]))
    else:
        model = init_model or make_model(cfg, len(dataset.vocab))
    del init_model
    model = model.to(device)
    model.bert.gradient_checkpointing = cfg.model.gradient_checkpointing
    log.info("model %s: %s", cfg.model.name, describe(model.config, count_parameters(model)))
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.optim, t.max_steps))
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start = resume["step"]
        del resume
    if ranks.rank > 0:  # the same weights everywhere, but each rank its own dropout masks
        torch.manual_seed(t.seed + 1_000_003 * ranks.rank + start)
    module = PretrainingLosses(model)
    if ranks.world > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )

    use_bf16 = t.precision == "bf16"
    if use_bf16 and not bf16_is_native(device):
        log.warning(
            "trainer.precision=bf16 on a %s CPU without bf16 instructions is emulated and "
            "much slower than fp32; use fp32 here",
            torch.backends.cpu.get_cpu_capability(),
        )

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    stream = BatchStream(dataset.train, t.batch_size, t.seed, cfg.data.masking == "dynamic")
    # Steps up to `start` were logged by the interrupted run; drop anything it logged later
    # (everything, when a killed run left no checkpoint and we start again from 0).
    writer = (
        SummaryWriter(str(run_dir / "tensorboard"), purge_step=start + 1) if ranks.main else None
    )
    flops = flops_per_sequence(
        model.config, cfg.data.max_len, float(dataset.train.predictions().mean())
    )
    config_dict = to_dict(cfg)
    saved: list[Path] = checkpoint.list_checkpoints(run_dir)[-1:]
    validated: dict = {}  # the last validation's metrics, recorded in every checkpoint

    def save(step: int) -> Path:
        writer.flush()  # the curve on disk reaches at least the checkpoint's step
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise UserError(
                f"the weights became non-finite by step {step}; not saving them. The last good "
                f"checkpoint is {saved[-1] if saved else 'none'}; lower optim.lr and resume from it"
            )
        path = checkpoint.path_for(run_dir, step)
        checkpoint.save(
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "vocab": dataset.vocab,
                "tokenizer": dataset.tokenizer.settings(),
                "corpus_digest": dataset.corpus_digest,
                "config": config_dict,
                "model_config": model.config.to_dict(),
                "val_metrics": dict(validated),
            },
            path,
        )
        saved.append(path)
        checkpoint.prune(run_dir, t.keep_last)
        rundir.update_latest(run_dir)
        return path

    def run_eval(step: int) -> dict:
        if dataset.valid is None:
            return {}
        micro = t.batch_size // (ranks.world * accum)  # what the memory plan allowed
        metrics = evaluate(
            model, dataset.valid, micro, t.eval_batches * accum, device, autocast, lambda: stop
        )
        if metrics is None:  # a signal arrived: the caller stops
            return {}
        validated.update(metrics, step=step)
        for k, v in metrics.items():
            writer.add_scalar(f"val/{k}", v, step)
        log.info(
            "validation at step %d: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
        return metrics

    model.train()
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=t.max_steps,
        initial=start,
        disable=not (interactive and ranks.main),
        unit="step",
        dynamic_ncols=True,
    )
    window = torch.zeros(2, device=device)  # summed mlm, nsp losses since the last log line
    window_steps, window_start = 0, time.perf_counter()
    last = {"mlm_loss": math.nan, "nsp_loss": math.nan}
    speeds: list[float] = []
    skipped = 0
    steps = range(start, t.max_steps)
    loader = batch_loader(
        stream, steps, ranks.rank, ranks.world, t.num_workers, device.type == "cuda"
    )
    for step, batch in zip(steps, loader, strict=True):
        done = step + 1
        # the global batch's masked positions and examples: the losses' denominators
        local = torch.tensor([int((batch["pred_weights"] > 0).sum()), len(batch["nsp_labels"])])
        counts = distributed.sum_over_ranks(local.to(device)).unbind()
        micro = [
            {k: v.to(device, non_blocking=True) for k, v in mb.items()}
            for mb in split_batch(batch, accum)
        ]
        before = rng_state() if len(micro) > 1 else None
        losses, finite = training_step(
            module, optimizer, micro, autocast, cfg.optim.grad_clip, counts, lambda: bool(stop)
        )
        if losses is None:  # stopped within the step: the weights are those of `step`
            set_rng_state(before)  # so that the resumed run draws the same dropout masks
            bar.close()
            log.warning("stopping within step %d: its micro-steps so far are dropped", done)
            _stopped(stop, step, save(step) if ranks.main else None, run_dir, writer)
        if finite:
            window += losses
            window_steps += 1
        else:
            skipped += 1
            if skipped > t.skip_nonfinite:
                raise UserError(
                    f"non-finite loss at step {done}; the last good checkpoint is "
                    f"{saved[-1] if saved else 'none'}; lower optim.lr, or allow skipping such "
                    "steps with trainer.skip_nonfinite=N"
                )
            log.warning(
                "step %d: non-finite loss, skipped (%d of %d allowed)",
                done,
                skipped,
                t.skip_nonfinite,
            )
        scheduler.step()
        bar.update(1)

        if window_steps and (done % t.log_every == 0 or done == t.max_steps):
            elapsed = time.perf_counter() - window_start
            mlm_avg, nsp_avg = (distributed.sum_over_ranks(window) / window_steps).tolist()
            seq_s = window_steps * t.batch_size / elapsed
            speeds.append(seq_s)
            last = {"mlm_loss": mlm_avg, "nsp_loss": nsp_avg}
            if ranks.main:
                for name, value in [
                    ("mlm_loss", mlm_avg),
                    ("nsp_loss", nsp_avg),
                    ("loss", mlm_avg + nsp_avg),
                    ("lr", scheduler.get_last_lr()[0]),
                    ("seq_per_s", seq_s),
                ]:
                    writer.add_scalar(f"train/{name}", value, done)
                bar.set_postfix(mlm=f"{mlm_avg:.3f}", nsp=f"{nsp_avg:.3f}", seq_s=f"{seq_s:.0f}")
                if not interactive:
                    log.info(_log_line(done, t.max_steps, mlm_avg, nsp_avg, seq_s))
            window.zero_()
            window_steps, window_start = 0, time.perf_counter()
        if distributed.any_rank(bool(stop), device):
            bar.close()
            path = save(done) if ranks.main else None
            _stopped(stop, done, path, run_dir, writer)
        if ranks.main and t.eval_every and done % t.eval_every == 0 and done != t.max_steps:
            run_eval(done)
            window_start = time.perf_counter()
        if ranks.main and t.save_every and done % t.save_every == 0 and done != t.max_steps:
            save(done)
            window_start = time.perf_counter()
    bar.close()
    if not ranks.main:
        return {"steps": t.max_steps, **last}

    # Save before the final validation, so nothing that goes wrong there loses the weights.
    path = save(t.max_steps)
    metrics = run_eval(t.max_steps)
    if stop:
        _stopped(stop, t.max_steps, path, run_dir, writer)
    if metrics:
        save(t.max_steps)  # again, now recording the final validation (encode reads it)
    if metrics and metrics["token_spread"] < COLLAPSED:
        log.warning(
            "the encoder gives almost the same vector to every token (token spread %.1g): "
            "encode's vectors will barely depend on the context. Train with a lower "
            "optim.lr (the default optim=adam uses 1e-3; docs/defaults.md)",
            metrics["token_spread"],
        )
    seq_s = sorted(speeds)[len(speeds) // 2] if speeds else math.nan
    writer.add_hparams(
        _flat_hparams(config_dict),
        {f"hparam/val_{k}": v for k, v in metrics.items()}
        | {"hparam/train_mlm_loss": last["mlm_loss"]},
        run_name=".",
    )
    writer.close()
    summary = {
        "steps": t.max_steps,
        "train_mlm_loss": last["mlm_loss"],
        "train_nsp_loss": last["nsp_loss"],
        **{f"val_{k}": v for k, v in metrics.items()},
        "tokens_per_example": tokens,
        "seq_per_s": seq_s,
        "model_tflops": seq_s * flops / 1e12,
        "grad_accum": accum,
        "planned_memory": planned,
        "peak_memory": plan.peak_memory(device),
        "checkpoint": str(path),
        "tensorboard": str(run_dir / "tensorboard"),
    }
    rundir.write_summary(run_dir, summary)
    val = (
        f", val mlm {metrics['mlm_loss']:.3f} (acc {metrics['mlm_acc']:.3f}) "
        f"nsp {metrics['nsp_loss']:.3f} (acc {metrics['nsp_acc']:.3f})"
        if metrics
        else ""
    )
    log.info(
        "done: %d steps, mlm %.3f nsp %.3f%s, %.1f seq/s (%.3f model TFLOP/s), peak memory %s "
        "(planned %s); checkpoint %s; curves: tensorboard --logdir %s",
        t.max_steps,
        last["mlm_loss"],
        last["nsp_loss"],
        val,
        seq_s,
        summary["model_tflops"],
        plan.format_size(summary["peak_memory"]),
        plan.format_size(planned),
        path,
        run_dir / "tensorboard",
    )
    return summary


def _stopped(stop: list[int], step: int, path: Path | None, run_dir: Path, writer) -> NoReturn:
    """Stop after a signal: say where the weights are and how to resume, exit 128 + signal."""
    signum = stop[0] if stop else signal.SIGTERM
    name = signal.Signals(signum).name
    log.warning("received %s: stopping after step %d", name, step)
    if writer is not None:
        writer.close()
    where = f"; checkpoint {path}" if path is not None else ""
    raise Interrupted(
        f"stopped by {name} after step {step}{where}; to resume, rerun with "
        f"hydra.run.dir={run_dir} trainer.resume=true",
        128 + signum,
    )


def _flat_hparams(config: dict, prefix: str = "") -> dict:
    """The config as flat scalars, as TensorBoard's hparams view wants them."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flat_hparams(v, f"{key}.")
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        elif v is None:
            out[key] = "null"
        else:
            out[key] = str(v)
    return out
