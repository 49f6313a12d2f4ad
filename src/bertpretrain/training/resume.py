"""The resume policy: which checkpoint a run continues, and what a resume may change.

A resume continues one run: it may change how the run goes fast, logs, evaluates and saves,
never what it learns. The checkpoint's recorded config is compared key by key with the
resuming one (both as the plain dicts a checkpoint records).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bertpretrain.errors import UserError
from bertpretrain.training.checkpoint import list_checkpoints, load, resolve

log = logging.getLogger(__name__)

# What a resume may change besides the speed group (speed.*, none of which changes the
# recipe): logging, evaluation and saving, and where the corpus lies (its bytes are checked
# by their digest). The model's name is a label: its architecture is compared field by
# field. Every other setting changes the trained weights, so a resume that changes it
# would be a different run under this name.
FREE_ON_RESUME = frozenset(
    {
        "model.name",
        *(f"data.{k}" for k in ("root", "dir", "urls", "sha1", "cache", "name", "config")),
        *(f"data.{k}" for k in ("revision", "files", "train_split", "valid_split", "valid_files")),
        *(f"trainer.{k}" for k in ("max_steps", "grad_accum", "device", "resume")),
        *(f"trainer.{k}" for k in ("log_every", "eval_every", "eval_batches", "save_every")),
        *(f"trainer.{k}" for k in ("keep_last", "skip_nonfinite", "memory_budget")),
    }
)
FREE_GROUPS = ("speed.",)


def check_resume(path: Path, state: dict, config: dict) -> None:
    """Refuse a resume that would not continue the checkpoint's run: a changed setting
    that changes the results (each listed with its old and new value), or a max_steps the
    checkpoint has already reached."""
    saved, wanted = flat(state["config"]), flat(config)
    changed = [
        f"{key} {_shown(saved[key])} -> {_shown(value)}"
        for key, value in wanted.items()
        if key in saved and saved[key] != value and not _free(key)
    ]
    if changed:
        raise UserError(
            f"cannot resume {path}: {', '.join(changed)} would change the results of its "
            "run (a resume may change speed.*, trainer.max_steps and how it logs, evaluates "
            "and saves); drop that override, or start a new run in another hydra.run.dir"
        )
    max_steps, step = config["trainer"]["max_steps"], state["step"]
    if max_steps <= step:
        raise UserError(
            f"trainer.max_steps={max_steps} is not above the step of {path} (step {step}); "
            "raise trainer.max_steps to train further"
        )


def resume_state(resume: bool | str, recorded: dict, run_dir: Path) -> dict | None:
    """The checkpoint to continue (`trainer.resume`: true for the run dir's newest, or a
    path), checked against `recorded`, the resuming run's config as a checkpoint records it
    (`config.to_dict`), to continue the same run; None to start anew."""
    if resume is False:
        return None
    if resume is True:
        found = list_checkpoints(run_dir)
        if not found:
            log.info(
                "trainer.resume=true but %s has no checkpoint yet: starting from step 0", run_dir
            )
            return None
        path = found[-1]
    else:
        path = resolve(resume)
    state = load(path)
    try:
        check_resume(path, state, recorded)
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path} has no usable config or step ({type(e).__name__}: {e}); resume from a "
            "checkpoint written by `bertpretrain train`"
        ) from None
    log.info("resuming from %s (step %d)", path, state["step"])
    return state


def _free(key: str) -> bool:
    return key in FREE_ON_RESUME or key.startswith(FREE_GROUPS)


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config as {"group.key": value}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: object) -> str:
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )
