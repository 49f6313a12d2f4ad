"""The runs under an outputs folder, to find the one to encode or export (the table that
`bertpretrain runs` prints is in commands/runs.py).

A run dir is recognised by Hydra's `.hydra/` folder; what is shown comes from its
`overrides.yaml`, its newest checkpoint and, for finished runs, `summary.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bertpretrain import checkpoint, rundir


def find_runs(root: Path) -> list[Path]:
    """Run dirs under root, oldest first (the `latest` link is not a run of its own)."""
    runs = {
        p.parent.resolve()
        for p in root.rglob(rundir.RECORD)
        if rundir.LATEST not in p.relative_to(root).parts
    }
    return sorted(runs, key=lambda p: p.stat().st_mtime)


def describe(run: Path) -> dict:
    overrides_file = run / rundir.RECORD / "overrides.yaml"
    overrides = []
    if overrides_file.is_file():  # a YAML list of strings, one `- item` per line
        overrides = [
            line[2:].strip()
            for line in overrides_file.read_text().splitlines()
            if line.startswith("- ")
        ]
    checkpoints = checkpoint.list_checkpoints(run)
    summary_file = run / rundir.SUMMARY
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
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
        "checkpoint": str(checkpoints[-1]) if checkpoints else None,
    }
