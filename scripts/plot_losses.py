"""Draw MLM and NSP loss curves (train and validation) of one or more runs.

    python scripts/plot_losses.py outputs/2026-11-25/11-57-07 outputs/multirun/2026-11-25/12-00-00/* --out losses.png

Reads the TensorBoard event files of each run dir; one line per run, so a sweep compares
at a glance. Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = [("mlm_loss", "MLM loss"), ("nsp_loss", "NSP loss")]


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def label(run_dir: Path) -> str:
    """The run's overrides when Hydra recorded them, else its folder."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        items = [ln[2:].strip() for ln in overrides.read_text().splitlines() if ln.startswith("- ")]
        kept = [i for i in items if not i.startswith(("data.dir=", "hydra."))]
        if kept:
            return " ".join(kept)
    return str(run_dir)


def plot(runs: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, run in enumerate(runs):
        curves = read_curves(run)
        color = f"C{i % 10}"
        for ax, (key, title) in zip(axes, PANELS):
            for split, style, marker in (("train", "-", None), ("val", "--", "o")):
                points = curves.get(f"{split}/{key}")
                if points:
                    steps, values = zip(*points)
                    ax.plot(
                        steps,
                        values,
                        style,
                        marker=marker,
                        color=color,
                        label=f"{label(run)} ({split})",
                    )
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run dirs (each holding tensorboard/)")
    parser.add_argument("--out", type=Path, default=Path("losses.png"))
    args = parser.parse_args()
    # A sweep's glob (multirun/DATE/TIME/*) also matches its multirun.yaml: skip what is
    # not a run dir, and fail only when nothing is left.
    runs = [r for r in args.runs if (r / "tensorboard").is_dir()]
    for skipped in (r for r in args.runs if r not in runs):
        print(f"plot_losses: skipping {skipped}: not a run dir (no tensorboard/)", file=sys.stderr)
    if not runs:
        sys.exit(
            f"plot_losses: error: no tensorboard/ folder in {', '.join(map(str, args.runs))}; "
            "give run dirs"
        )
    plot(runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
