"""`train ... trainer.resume=...`: the run's recorded config, with the new overrides on top.

A resume continues a run, so every setting the command line does not name is the run's own
(its .hydra/config.yaml, else its checkpoint's config), not conf/'s default: the user need
not retype the run's overrides. `resume.check_resume` then refuses only a new override
that changes the results. The recorded settings reach Hydra as overrides (only those that
differ from what the command line composes), so Hydra's own record of the resumed run
lists them too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bertpretrain.commands.overrides import override
from bertpretrain.config_compose import without_hydra
from bertpretrain.errors import UserError
from bertpretrain.training import checkpoint, rundir
from bertpretrain.training.resume import flat


def recorded_overrides(args: argparse.Namespace, cfg: DictConfig) -> list[str]:
    """Overrides that give the settings the command line (`args`, composed as `cfg`) does
    not name the values of the run it resumes; [] for a new run or one with no record."""
    resume = cfg.trainer.resume
    if resume is False or resume is None:
        return []
    run_dir = Path(cfg.hydra.run.dir) if resume is True else _run_dir_of(Path(str(resume)))
    recorded = _recorded(run_dir, resume)
    if recorded is None:
        return []
    named = {_key(o) for o in args.overrides}
    now = flat(OmegaConf.to_container(without_hydra(cfg), resolve=False))
    extra = []
    source = recorded.get("data", {}).get("source")
    if "data" not in named and source and source != cfg.data.source:
        # each corpus has its own keys: the run's data group, and every one of its settings
        extra.append(f"data={_choices(run_dir).get('data', source)}")
        now = {k: v for k, v in now.items() if not k.startswith("data.")}
        now |= {k: object() for k in flat(recorded) if k.startswith("data.")}
    return extra + [
        override(key, value)
        for key, value in flat(recorded).items()
        if key in now and now[key] != value and not _named(key, named)
    ]


def _run_dir_of(path: Path) -> Path:
    """The run dir of `trainer.resume=PATH`: a run dir, or one of its checkpoints."""
    return path.parent.parent if path.parent.name == checkpoint.SUBDIR else path


def _recorded(run_dir: Path, resume: object) -> dict | None:
    """The run's config as recorded: .hydra/config.yaml (interpolations kept), else the
    checkpoint's; None where neither can be read (the resume itself then says why)."""
    record = run_dir / rundir.RECORD / "config.yaml"
    try:
        if record.is_file():
            return OmegaConf.to_container(OmegaConf.load(record), resolve=False)
        config = checkpoint.load(checkpoint.resolve(run_dir if resume is True else str(resume)))
    except (OSError, OmegaConfBaseException, ValueError, UserError):
        return None
    return config.get("config") if isinstance(config.get("config"), dict) else None


def _choices(run_dir: Path) -> dict:
    """The config groups' options the run was composed from (Hydra's record of them)."""
    try:
        hydra = OmegaConf.load(run_dir / rundir.RECORD / "hydra.yaml")
        return dict(hydra.hydra.runtime.choices)
    except (OSError, OmegaConfBaseException, ValueError, AttributeError):
        return {}


def _key(override_text: str) -> str:
    """The key or group an override names: `trainer.seed=1` and `+x.y=2` give trainer.seed
    and x.y, `model=tiny` the group model."""
    return override_text.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _named(key: str, named: set[str]) -> bool:
    """Whether the command line sets `key`: itself, or its group (`model=base`)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in named for i in range(1, len(parts) + 1))
