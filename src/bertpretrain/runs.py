"""The runs under an outputs folder, to find the one to encode or export (the table that
`bertpretrain runs` prints is in commands/runs.py).

A run dir is recognised by Hydra's `.hydra/` folder; what is shown comes from its
`overrides.yaml`, its newest checkpoint and, for finished runs, `summary.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bertpretrain.training import checkpoint, rundir


def find_runs(root: Path) -> list[Path]:
    """Run dirs under root, oldest first (the `latest` link is not a run of its own)."""
    runs = {
        p.parent.resolve()
        for p in root.rglob(rundir.RECORD)
        if rundir.LATEST not in p.relative_to(root).parts
    }
    return sorted(runs, key=lambda p: p.stat().st_mtime)


def describe(run: Path) -> dict:
    """What the listing shows of `run`; a record or summary that cannot be read marks the
    run damaged (with why) instead of ending the listing of the others."""
    damaged = []
    overrides = _overrides(run / rundir.RECORD / "overrides.yaml", damaged)
    checkpoints = checkpoint.list_checkpoints(run)
    summary = _summary(run / rundir.SUMMARY, damaged)
    return {
        "run": str(run),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.stat().st_mtime)),
        "overrides": overrides,
        "steps": checkpoint.step_of(checkpoints[-1]) if checkpoints else 0,
        "finished": bool(summary),
        "train_mlm_loss": summary.get("train_mlm_loss"),
        "train_nsp_loss": summary.get("train_nsp_loss"),
        "val_mlm_loss": summary.get("val_mlm_loss"),
        "val_nsp_loss": summary.get("val_nsp_loss"),
        "task": summary.get("task"),  # a fine-tuning run's task and its dev metrics
        "metrics": summary.get("metrics"),
        "checkpoint": str(checkpoints[-1]) if checkpoints else None,
        "damaged": "; ".join(damaged) or None,
    }


def _overrides(path: Path, damaged: list[str]) -> list[str]:
    """The run's overrides: a YAML list of strings, one `- item` per line."""
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
    except (OSError, UnicodeDecodeError) as e:
        damaged.append(f"{path.name} unreadable ({type(e).__name__})")
        return []
    return [line[2:].strip() for line in text.splitlines() if line.startswith("- ")]


def _summary(path: Path, damaged: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        damaged.append(f"{path.name} unreadable ({type(e).__name__})")
        return {}
    if not isinstance(summary, dict):
        damaged.append(f"{path.name} is not a JSON object")
        return {}
    return summary
