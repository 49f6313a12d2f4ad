"""`bertpretrain train`'s config, checked before Hydra starts a run or a sweep.

Hydra reports a bad override over several lines, and in a sweep only when that job starts;
composing here first turns each into one line and exit code 2, before any run dir or data
is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from omegaconf import DictConfig

from bertpretrain.config_compose import compose, sweep_jobs
from bertpretrain.errors import UserError
from bertpretrain.model.architecture import ARCHITECTURE
from bertpretrain.training import rundir


def precheck(args: argparse.Namespace, probe_run_dir: bool = True) -> DictConfig | None:
    """Check the config of a run, or of every job of a sweep (`args`: Hydra's parsed command
    line). Returns the single run's composed config (the hydra node included); None where
    Hydra composes another (--config-path), answers itself (--help, --cfg) or sweeps (-m).
    `probe_run_dir=False` (torchrun's other ranks) leaves the run dir to rank 0: a probe
    creates and removes folders, which would race with rank 0 creating them."""
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return None  # Hydra answers these itself
    if args.config_path:
        if not os.path.isdir(os.path.abspath(args.config_path)):
            raise UserError(f"--config-path {args.config_path} is not a folder")
        return None  # another primary config: Hydra composes it
    overrides, name = composition(args)
    if args.multirun:
        _check_sweep(overrides, name)
        return None
    _, cfg = compose(overrides, name)
    _check_chdir(cfg)
    if args.cfg:
        return None
    if cfg.init:
        _check_init_overrides(overrides, cfg)
    if probe_run_dir:
        rundir.check_not_in_use(_run_dir(cfg))
    return cfg


def composition(args: argparse.Namespace) -> tuple[list[str], str]:
    """The overrides (a --config-dir as Hydra's search path) and the primary config's name
    that Hydra composes from `args`."""
    overrides = list(args.overrides)
    if args.config_dir:
        overrides.append(search_path(args.config_dir))
    return overrides, args.config_name or "config"


def search_path(config_dir: str) -> str:
    """The override that adds --config-dir's folder to the configs Hydra composes from."""
    path = os.path.abspath(config_dir)
    if not os.path.isdir(path):
        raise UserError(f"--config-dir {config_dir} is not a folder")
    return f"hydra.searchpath=[file://{path}]"


def _relative_paths(cfg: DictConfig) -> list[str]:
    """The settings that name a path relative to the folder the command runs from."""
    data, resume = cfg.data, cfg.trainer.resume
    named = {"data.dir": data.get("dir"), "data.root": data.get("root"), "init": cfg.init}
    named["trainer.resume"] = resume if isinstance(resume, str) else None
    found = [f"{key}={value}" for key, value in named.items() if value]
    for key in ("files", "valid_files"):
        found += [f"data.{key}=[{value}]" for value in data.get(key) or []]
    return [
        setting for setting in found if not os.path.isabs(setting.split("=", 1)[1].strip("[]~"))
    ]


def _check_chdir(cfg: DictConfig) -> None:
    """hydra.job.chdir=true starts the job inside its run dir, where relative paths no
    longer point where the user meant (and a new run dir holds nothing)."""
    if not cfg.hydra.job.chdir:
        return
    relative = _relative_paths(cfg)
    if relative:
        raise UserError(
            f"hydra.job.chdir=true runs the job inside its run dir, where the relative path "
            f"{relative[0]} would not point where you meant; give absolute paths, or drop "
            "hydra.job.chdir=true (bertpretrain writes everything under the run dir anyway)"
        )


def _check_init_overrides(overrides: list[str], cfg: DictConfig) -> None:
    """With init=, the architecture is that model's: a `model=` or `model.X=` override that
    asks for another is refused (one that agrees, or a speed setting, passes)."""
    from bertpretrain.init_from import init_architecture

    keys = [override.split("=", 1)[0].lstrip("+~") for override in overrides]
    if not any(key == "model" or key.removeprefix("model.") in ARCHITECTURE for key in keys):
        return
    _, arch = init_architecture(cfg.init)
    differ = [
        f"model.{key}={getattr(cfg.model, key)}"
        for key in ARCHITECTURE
        if getattr(cfg.model, key) != getattr(arch, key)
    ]
    if differ:
        mine = ", ".join(f"{key} {getattr(arch, key)}" for key in ARCHITECTURE)
        raise UserError(
            f"init={cfg.init} sets the architecture ({mine}), but the overrides ask for "
            f"{', '.join(differ)}; drop the model override"
        )


def _run_dir(cfg: DictConfig) -> Path:
    """The run dir, resolved, and checked to be creatable: a path the OS refuses is one
    line here, not a traceback inside Hydra."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        run_dir = Path(cfg.hydra.run.dir)
    except OmegaConfBaseException as e:
        raise UserError(f"bad config: hydra.run.dir: {str(e).splitlines()[0]}") from None
    _check_writable(run_dir)
    missing = [p for p in (run_dir.absolute(), *run_dir.absolute().parents) if not p.exists()]
    try:  # create it to see that the OS allows it, then leave the creating to Hydra: its
        for folder in reversed(missing):  # ${now:...} may name another second's dir
            folder.mkdir()
    except OSError as e:
        raise UserError(
            f"cannot create the run dir {run_dir}: {e.strerror}; set "
            "hydra.run.dir=SOME/WRITABLE/PATH"
        ) from None
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()
    return run_dir


def _check_writable(run_dir: Path) -> None:
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(
            f"cannot write the run dir {run_dir}: {existing} is not a writable folder; "
            "run from a writable folder or set hydra.run.dir=SOME/WRITABLE/PATH"
        )


def _check_sweep(overrides: list[str], config_name: str) -> None:
    """Compose every job of a sweep; one line per job that would fail, then exit 2."""
    jobs = sweep_jobs(overrides)
    if jobs == []:
        raise UserError(
            f"the sweep {' '.join(overrides)} launches no jobs (a range or list without "
            "values, e.g. range(0)); give each swept key at least one value"
        )
    problems = []
    for number, job in enumerate(jobs or []):
        try:
            _check_chdir(compose(job, config_name)[1])
        except UserError as e:
            problems.append(f"sweep job {number} ({' '.join(job)}): {e}")
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:  # one line for all, as for any refusal
        raise UserError(
            f"{len(problems)} of {len(jobs)} sweep jobs would fail: " + "; ".join(problems)
        )
