"""`bertpretrain runs`: the runs under an outputs folder, to find the one to encode or export.

A run dir is recognised by Hydra's `.hydra/` folder; what is shown comes from its
`overrides.yaml`, its newest checkpoint and, for finished runs, `summary.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bertpretrain import checkpoint, rundir
from bertpretrain.errors import ArgumentParser, UserError


def find_runs(root: Path) -> list[Path]:
    """Run dirs under root, oldest first (the `latest` link is not a run of its own)."""
    runs = {
        p.parent.resolve()
        for p in root.rglob(rundir.RECORD)
        if "latest" not in p.relative_to(root).parts
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
        "steps": int(checkpoints[-1].stem.split("_")[1]) if checkpoints else 0,
        "finished": bool(summary),
        "train_mlm_loss": summary.get("train_mlm_loss"),
        "train_nsp_loss": summary.get("train_nsp_loss"),
        "val_mlm_loss": summary.get("val_mlm_loss"),
        "val_nsp_loss": summary.get("val_nsp_loss"),
        "checkpoint": str(checkpoints[-1]) if checkpoints else None,
    }


def _loss(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def main(argv: list[str]) -> None:
    parser = ArgumentParser(
        prog="bertpretrain runs",
        description="List the training runs under an outputs folder, newest last.",
    )
    parser.add_argument(
        "root", nargs="?", default="outputs", help="folder to search (default: outputs)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document for scripts")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise UserError(
            f"{root} is not a folder; runs live under outputs/ of the folder you trained in"
        )
    rows = [describe(run) for run in find_runs(root)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    if not rows:
        print(f"no runs under {root}; train one with `bertpretrain train model=tiny`")
        return
    print(
        f"{'date':<17} {'steps':>6} {'mlm':>6} {'nsp':>6} {'val mlm':>8} {'val nsp':>8}  run / overrides / checkpoint"
    )
    for r in rows:
        state = "" if r["finished"] else " (unfinished)"
        print(
            f"{r['date']:<17} {r['steps']:>6} {_loss(r['train_mlm_loss']):>6} {_loss(r['train_nsp_loss']):>6} "
            f"{_loss(r['val_mlm_loss']):>8} {_loss(r['val_nsp_loss']):>8}  {r['run']}{state}"
        )
        print(f"{'':<17} {' '.join(r['overrides']) or '(defaults)'}")
        print(f"{'':<17} {r['checkpoint'] or 'no checkpoint yet'}")
