"""`bertpretrain train ...`: a Hydra app. Everything after `train` reaches Hydra exactly as it
would reach a `@hydra.main` program (overrides, -m, --cfg job, --help, --config-dir), and
the same command runs under torchrun.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bertpretrain import distributed
from bertpretrain.commands import run_dir as run_dirs
from bertpretrain.commands.fail import exit_on, fail, full_errors, user_message
from bertpretrain.commands.overrides import added
from bertpretrain.commands.precheck import precheck
from bertpretrain.commands.resume import recorded_overrides
from bertpretrain.commands.sweep_failures import failure_reports, report_failure
from bertpretrain.config_compose import (
    conf_dir,
    name_the_model,
    register_configs,
    to_config,
    without_hydra,
)
from bertpretrain.errors import Interrupted, UserError

log = logging.getLogger("bertpretrain")


def parse_hydra_args(argv: list[str]) -> argparse.Namespace:
    """`argv` read by Hydra's own command-line parser, as `@hydra.main` reads it.

    This is `hydra._internal`, on purpose: the checks before Hydra starts (precheck, the
    torchrun run dir) must know which of Hydra's flags argv holds (-m, --cfg, --help,
    --hydra-help, --info, --config-dir, --config-path, --config-name) and which words are
    overrides, and Hydra 1.3 has no public way to learn that. `hydra.main` parses sys.argv
    inside its wrapper and hands the result only to `_run_hydra` (internal too); the compose
    API (`initialize_config_dir`, `compose`) takes overrides, not a command line; and
    `HydraConfig` exists only once a job runs, after Hydra has composed (and reported a bad
    override its own way, over several lines). Hydra's maintainers declined to expose the
    parser (Hydra issues #1578 and #215, closed as wontfix). A parser of our own would drift
    from Hydra's as Hydra adds flags; the one Hydra uses cannot. test_train_cli's
    test_hydras_internal_parser_reads_the_flags_train_relies_on fails if it changes.
    """
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.error = lambda message: _refuse_command_line(argv, message)  # not a usage dump
    return parser.parse_args(argv)


def _refuse_command_line(argv: list[str], message: str) -> NoReturn:
    """Hydra's flags (-m, --cfg, ...) come before the overrides, as for any Hydra app; a
    flag after an override is read as stray words, so say where it goes."""
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    if "unrecognized arguments" in message and any("=" in a for a in argv[:first_flag]):
        flags = [a for a in argv[first_flag:] if a.startswith("-")]
        raise UserError(
            f"put Hydra's flags ({' '.join(flags)}) before the overrides, e.g. "
            f"`bertpretrain train {' '.join(flags)} KEY=VALUE ...` ({message})"
        )
    raise UserError(f"{message}; see `bertpretrain train --help`")


def main(argv: list[str], config_name: str = "config") -> None:
    """`bertpretrain train ARGV`; `finetune` is this app composing conf/finetune.yaml."""
    register_configs()
    if config_name != "config" and "--config-name" not in argv and "-cn" not in argv:
        argv = ["--config-name", config_name, *argv]  # Hydra's flags come first
    args = parse_hydra_args(argv)
    torchrun = distributed.launched_by_torchrun()
    # The precheck composes the config, and Hydra composes it again below. Composing first
    # is what turns a bad override into one line and exit 2 before any run dir exists
    # (Hydra would print several lines, exit 1, and in a sweep only when that job starts).
    # Hydra cannot take the composed config from us: hydra.main's one argument
    # (cfg_passthrough) skips Hydra altogether (no run dir, logging, HydraConfig or
    # launcher), and `hydra.core.utils.run_job` needs a HydraContext built from Hydra's
    # internal ConfigLoaderImpl. The first composition fixes the run dir's name.
    probe = not torchrun or distributed.env_rank() == 0
    cfg = precheck(args, probe)
    extra = recorded_overrides(args, cfg) if cfg is not None else []
    if extra:  # a resume: the run's own settings where the command line names none
        argv = added(argv, args.overrides, extra)
        args = parse_hydra_args(argv)
        cfg = precheck(args, probe)
    argv, created = _one_run_dir(argv, args.overrides, cfg, torchrun)
    tracebacks = full_errors()

    def job(cfg: DictConfig) -> None:
        _job(cfg, tracebacks)

    run = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(job)
    sys.argv = [sys.argv[0], *argv]  # what hydra.main reads
    with (
        failure_reports(bool(args.multirun)) as failures,
        run_dirs.removed_if_left_empty(created),
        _hydra_raises(),
    ):
        try:
            run()
            distributed.leave_together()
        finally:
            distributed.shutdown()
    if failures:
        fail(f"{len(failures)} sweep job(s) failed: " + "; ".join(failures))


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Hydra prints an error it catches as a traceback (or several lines) and exits 1;
    with its HYDRA_FULL_ERROR switch it raises instead, so that the error reaches the one
    boundary of every command (`fail.report`). The user's own choice is read before."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _one_run_dir(
    argv: list[str], overrides: list[str], cfg: DictConfig | None, torchrun: bool
) -> tuple[list[str], list[Path]]:
    """argv with the one run's dir fixed (`run_dirs`), and the folders that are to be
    removed if the run is refused; a sweep, --cfg or --help keeps Hydra's own naming."""
    if cfg is None:
        if torchrun:
            raise UserError(
                "under torchrun, `train` takes overrides only (no -m sweeps, --cfg or --help)"
            )
        return argv, []
    run_dir = Path(cfg.hydra.run.dir).absolute()
    if not torchrun:
        return run_dirs.fixed(argv, overrides, run_dir), run_dirs.missing(run_dir)
    run_dir, created = run_dirs.for_all_ranks(run_dir)
    argv = run_dirs.fixed(argv, overrides, run_dir)
    if not distributed.ranks().main:  # Hydra's logs and .hydra folder: rank 0's alone
        argv += ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return argv, created


def _job(cfg: DictConfig, tracebacks: bool) -> None:
    """One run, as Hydra starts it: alone (an error ends it through the boundary of every
    command, `fail.report`), or as one job of a sweep, which survives it."""
    from bertpretrain.config import FinetuneConfig

    hydra_config = HydraConfig.get()
    multirun = hydra_config.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_config.runtime.output_dir)
    name_the_model(cfg)
    try:
        config = to_config(without_hydra(cfg))
        run = _finetune() if isinstance(config, FinetuneConfig) else _train()
        run(config, run_dir, _record(run_dir, without_hydra(cfg), hydra_config))
    except Interrupted as e:
        print(f"bertpretrain: {e}", file=sys.stderr)
        sys.exit(e.exit_code)  # a stopped sweep stops: the user asked for it
    except Exception as e:
        if tracebacks:
            raise
        if not multirun:  # here: raised on, Hydra would print a line of its own first
            exit_on(e)
        _sweep_job_failed(hydra_config, e, user_message(e))


def _train() -> Callable:
    from bertpretrain.training.loop import train  # torch & co. once the config is known good

    return train


def _finetune() -> Callable:
    # apart from _train: fine-tuning's metrics load scikit-learn and SciPy, which a
    # pretraining run (one per rank under torchrun) has no use for
    from bertpretrain.training.finetune import finetune

    return finetune


def _sweep_job_failed(hydra_config: DictConfig, error: Exception, user_error: str | None) -> None:
    """A sweep survives a failing job: log the failure, report it for the sweep's last
    line, and go on with the next job."""
    job = hydra_config.job.num
    overrides = " ".join(hydra_config.overrides.task) or "(defaults)"
    if user_error is not None:
        log.error("job %s (%s) failed: %s", job, overrides, user_error)
        reason = user_error
    else:  # a bug: its traceback goes into the job's log
        log.exception("job %s (%s) failed", job, overrides)
        reason = f"{type(error).__name__}: {error}"
    report_failure(job, f"job {job} ({overrides}): {reason}")


def _record(run_dir: Path, cfg: DictConfig, hydra_config: DictConfig) -> Callable[[], None]:
    """What Hydra writes into .hydra/ at a job's start, for `train` to write once the run
    is accepted: written earlier, a refused run would replace another run's record."""
    from bertpretrain import files
    from bertpretrain.training import rundir

    texts = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": OmegaConf.to_container(hydra_config)}),
        "overrides.yaml": OmegaConf.to_yaml(list(hydra_config.overrides.task)),
    }

    def write() -> None:
        folder = run_dir / rundir.RECORD
        folder.mkdir(exist_ok=True)
        for name, text in texts.items():
            files.atomic_write(folder / name, lambda f, text=text: f.write(text.encode()))

    return write
