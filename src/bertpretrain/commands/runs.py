"""`bertpretrain runs [ROOT]`: the table (or JSON) of `bertpretrain.runs.describe` for
every run under ROOT."""

from __future__ import annotations

import json
from pathlib import Path

from bertpretrain.errors import ArgumentParser, UserError
from bertpretrain.runs import describe, find_runs


def main(argv: list[str]) -> None:
    parser = ArgumentParser(
        prog="bertpretrain runs",
        description="List the training and fine-tuning runs under an outputs folder, newest last.",
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
    elif not rows:
        print(f"no runs under {root}; train one with `bertpretrain train model=tiny`")
    else:
        _print_table(rows)


def _print_table(rows: list[dict]) -> None:
    print(
        f"{'date':<17} {'steps':>6} {'mlm':>6} {'nsp':>6} {'val mlm':>8} {'val nsp':>8}  "
        "run / overrides / checkpoint"
    )
    for row in rows:
        state = f" (damaged: {row['damaged']})" if row["damaged"] else ""
        state = state or ("" if row["finished"] else " (unfinished)")
        losses = [_loss(row[key]) for key in ("train_mlm_loss", "train_nsp_loss")]
        val_losses = [_loss(row[key]) for key in ("val_mlm_loss", "val_nsp_loss")]
        print(
            f"{row['date']:<17} {row['steps']:>6} {losses[0]:>6} {losses[1]:>6} "
            f"{val_losses[0]:>8} {val_losses[1]:>8}  {row['run']}{state}"
        )
        print(f"{'':<17} {' '.join(row['overrides']) or '(defaults)'}")
        if row["task"] and isinstance(row["metrics"], dict):
            shown = "  ".join(f"{k} {_loss(v)}" for k, v in row["metrics"].items())
            print(f"{'':<17} fine-tuned on {row['task']}: dev {shown}")
        print(f"{'':<17} {row['checkpoint'] or 'no checkpoint yet'}")


def _loss(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"
