"""The training loop: set up, then step, log, evaluate and save until max_steps, then finish.

`train(cfg, run_dir)` is plain Python: Hydra (cli.py) only chooses the config and the run
dir, so tests and notebooks call it directly. What the loop touches is one `Run`, built
by `setup.set_up`; each of the loop's steps is a function of it below.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from bertpretrain import distributed
from bertpretrain.config import Config, to_dict
from bertpretrain.data.batches import batch_loader
from bertpretrain.device import pick_device
from bertpretrain.errors import UserError
from bertpretrain.init_from import adopt
from bertpretrain.memory.budget import peak_memory
from bertpretrain.memory.fit import oom_advice
from bertpretrain.memory.plan import Workload
from bertpretrain.model.bert import flops_per_sequence
from bertpretrain.training import checkpoint, rundir, signals
from bertpretrain.training.evaluate import COLLAPSED
from bertpretrain.training.optimize import split_batch, training_step
from bertpretrain.training.progress import Progress, write_hparams
from bertpretrain.training.setup import Run, set_up

log = logging.getLogger(__name__)


def train(cfg: Config, run_dir: Path, record: Callable[[], None] | None = None) -> dict:
    """Pretrain BERT as `cfg` says, writing TensorBoard logs and checkpoints into run_dir;
    the summary (`run_job` says how)."""
    return run_job(cfg, run_dir, record, set_up, finish)


def run_job(
    cfg,
    run_dir: Path,
    record: Callable[[], None] | None,
    set_up: Callable[..., Run],
    finish: Callable[[Run, Progress], dict],
) -> dict:
    """A run of `cfg` (pretraining's `Config` or fine-tuning's): `set_up(cfg, run_dir,
    stop, accepted, init_path)` builds the `Run`, `loop` trains it, `finish` writes what
    it ends with and gives the summary.

    Under torchrun every rank calls this; rank 0 alone logs, evaluates and saves. Nothing
    is written into run_dir before its lock is held and the run is accepted (the run dir,
    the resume and the data checked): then the log so far goes to train.log, and `record`
    (the CLI's writer of Hydra's config record) runs.
    """
    main = distributed.ranks().main
    lock = rundir.run_lock(run_dir) if main else contextlib.nullcontext()
    with lock, signals.stop_requests() as stop:
        distributed.check_on_rank_zero(lambda: rundir.check_new_run(run_dir, cfg.trainer.resume))
        with rundir.log_file(run_dir, main) as log_to_file:

            def accepted() -> None:
                log_to_file()
                if record is not None:
                    record()

            try:
                # init= read once, into a new config: all that follows sees this one
                init = adopt(cfg.init, cfg.model, cfg.data.max_len) if cfg.init else None
                if init is not None:
                    cfg = replace(cfg, model=init.model)
                run = set_up(cfg, run_dir, stop, accepted, init and init.path)
                progress = loop(run)
                if not run.ranks.main:
                    return {"steps": run.cfg.trainer.max_steps, **progress.last}
                return finish(run, progress)
            except torch.OutOfMemoryError:
                work = Workload(cfg.model, cfg.trainer, cfg.speed, cfg.optim, cfg.data.max_len)
                device = pick_device(cfg.trainer.device)
                raise UserError(oom_advice(work, device, cfg.tokenizer.vocab_size)) from None


def loop(run: Run) -> Progress:
    """Steps from the run's start to max_steps, each: step, log, maybe stop, evaluate, save."""
    trainer = run.cfg.trainer
    progress = Progress(
        trainer.max_steps,
        run.start,
        trainer.batch_size,
        run.writer,
        run.device,
        run.objective.losses,
    )
    steps = range(run.start, trainer.max_steps)
    loader = batch_loader(
        run.objective.stream,
        steps,
        run.ranks.rank,
        run.ranks.world,
        run.cfg.speed.num_workers,
        run.device.type == "cuda",
    )
    for step, batch in zip(steps, loader, strict=True):
        done = step + 1
        losses = one_step(run, step, batch, progress)
        run.scheduler.step()
        progress.add(losses)
        progress.report(done, trainer.log_every, run.scheduler.get_last_lr()[0])
        if distributed.any_rank(bool(run.stop), run.device):
            progress.close()
            signals.stopped(run.stop, done, save(run, done), run.run_dir, run.writer)
        if run.ranks.main and due(trainer.eval_every, done, trainer.max_steps):
            with progress.paused():
                validate(run, done)
        if run.ranks.main and due(trainer.save_every, done, trainer.max_steps):
            with progress.paused():
                save(run, done)
    progress.close()
    return progress


def due(every: int, done: int, max_steps: int) -> bool:
    """Whether a periodic validation or save falls at step `done` (the last step has its own)."""
    return bool(every) and done % every == 0 and done != max_steps


def one_step(run: Run, step: int, batch: dict, progress: Progress) -> torch.Tensor | None:
    """Train on one global batch; its losses, or None for a skipped step."""
    local = torch.tensor(run.objective.counts(batch))  # summed: the global batch's denominators
    counts = distributed.sum_over_ranks(local.to(run.device)).unbind()
    micro = [
        {k: v.to(run.device, non_blocking=True) for k, v in part.items()}
        for part in split_batch(batch, run.accum)
    ]
    rng_before = checkpoint.rng_state() if len(micro) > 1 else None
    losses, finite = training_step(
        run.module,
        run.optimizer,
        micro,
        run.autocast,
        run.cfg.optim.grad_clip,
        counts,
        lambda: bool(run.stop),
    )
    if losses is None:  # stopped within the step: the weights are those of `step`
        checkpoint.set_rng_state(rng_before)  # the resumed run draws the same dropout masks
        progress.close()
        log.warning("stopping within step %d: its micro-steps so far are dropped", step + 1)
        signals.stopped(run.stop, step, save(run, step), run.run_dir, run.writer)
    if not finite:
        skip_nonfinite(run, step + 1)
    return losses if finite else None


def skip_nonfinite(run: Run, done: int) -> None:
    run.skipped += 1
    allowed = run.cfg.trainer.skip_nonfinite
    if run.skipped > allowed:
        raise UserError(
            f"non-finite loss at step {done}; the last good checkpoint is "
            f"{run.saved[-1] if run.saved else 'none'}; lower optim.lr, or allow skipping such "
            "steps with trainer.skip_nonfinite=N"
        )
    log.warning("step %d: non-finite loss, skipped (%d of %d allowed)", done, run.skipped, allowed)


def save(run: Run, step: int) -> Path | None:
    """Checkpoint the run at `step` (rank 0; the others return None), prune old ones and
    point outputs/latest here."""
    if not run.ranks.main:
        return None
    run.writer.flush()  # the curve on disk reaches at least the checkpoint's step
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise UserError(
            f"the weights became non-finite by step {step}; not saving them. The last good "
            f"checkpoint is {run.saved[-1] if run.saved else 'none'}; lower optim.lr and "
            "resume from it"
        )
    path = checkpoint.path_for(run.run_dir, step)
    checkpoint.save(
        {
            "step": step,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            **run.objective.record,
            "config": to_dict(run.cfg),
            "model_config": run.model.config.to_dict(),
            "val_metrics": dict(run.validated),
        },
        path,
    )
    run.saved.append(path)
    checkpoint.prune(run.run_dir, run.cfg.trainer.keep_last)
    if run.objective.latest:
        rundir.update_latest(run.run_dir)
    return path


def validate(run: Run, step: int) -> dict:
    """Evaluate on the validation split (rank 0), log it and keep it for the checkpoints;
    {} without a validation split or when a signal cut it short."""
    if run.objective.validate is None:
        return {}
    metrics = run.objective.validate(lambda: run.stop, step)
    if metrics is None:
        return {}
    run.validated.update(metrics, step=step)
    for name, value in metrics.items():
        run.writer.add_scalar(f"val/{name}", value, step)
    shown = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    log.info("validation at step %d: %s", step, shown)
    return metrics


def finish(run: Run, progress: Progress) -> dict:
    """Save, validate, and write the run's summary (rank 0)."""
    max_steps = run.cfg.trainer.max_steps
    # Save before the final validation, so nothing that goes wrong there loses the weights.
    path = save(run, max_steps)
    metrics = validate(run, max_steps)
    if run.stop:
        signals.stopped(run.stop, max_steps, path, run.run_dir, run.writer, complete=True)
    if metrics:
        save(run, max_steps)  # again, now recording the final validation (encode reads it)
    if metrics and metrics["token_spread"] < COLLAPSED:
        log.warning(
            "the encoder gives almost the same vector to every token (token spread %.1g): "
            "encode's vectors will barely depend on the context. Train with a lower "
            "optim.lr (the default optim=adam uses 1e-3; docs/defaults.md)",
            metrics["token_spread"],
        )
    write_hparams(run.writer, to_dict(run.cfg), metrics, {"mlm_loss": progress.last["mlm_loss"]})
    run.writer.close()
    summary = summarise(run, progress, metrics, path)
    rundir.write_summary(run.run_dir, summary)
    log.info(rundir.done_line(summary))
    return summary


def summarise(run: Run, progress: Progress, metrics: dict, path: Path) -> dict:
    seq_s = progress.median_speed()
    train_set = run.dataset.train
    flops = flops_per_sequence(
        run.model.config, run.cfg.data.max_len, float(train_set.predictions().mean())
    )
    return {
        "steps": run.cfg.trainer.max_steps,
        "train_mlm_loss": progress.last["mlm_loss"],
        "train_nsp_loss": progress.last["nsp_loss"],
        **{f"val_{name}": value for name, value in metrics.items()},
        "tokens_per_example": float(train_set.valid_lens.mean()),
        "seq_per_s": seq_s,
        "model_tflops": seq_s * flops / 1e12,
        "grad_accum": run.accum,
        "planned_memory": run.planned,
        "peak_memory": peak_memory(run.device),
        "checkpoint": str(path),
        "tensorboard": str(run.run_dir / "tensorboard"),
    }
