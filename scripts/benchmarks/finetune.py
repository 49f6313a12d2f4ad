"""Fine-tuning against transformers: one pretrained tiny run, exported once, fine-tuned by
`bertpretrain finetune` (a process) and by transformers' BertForSequenceClassification (in
this process, benchmarks/finetune_hf.py) with the same recipe on the same GLUE-layout
folders, for each seed.

What the issue asks: a dev score within 1 point of transformers' (the median over seeds)
on a single-sentence task and on a pair task, and a time per epoch at least 2x shorter on
CPU (the packed path does no work on padding).

- The pretrained run: `bertpretrain train model=tiny` on WikiText-2's validation split,
  exported once with `bertpretrain export` (BertForPreTraining: transformers' classifier
  loads its encoder and pooler and draws a new head, as our `init=` does).
- The tasks: scripts/wikitext_task.py on the test split, text the pretraining never read:
  `number` in SST-2's layout (task=sst2) and `words` in RTE's (task=rte).
- The recipe: what our run resolved and recorded in its checkpoint (lr, weight decay, eps,
  warmup steps, clipping, batch, epochs, max_len); transformers trains with those values.
- Time per epoch: the epoch's training steps (batches made, forward, backward, clip,
  update), not the dev evaluation and not start-up. Ours runs with trainer.log_every =
  the steps of one epoch, so each log line's seq/s covers exactly one epoch's steps: the
  loop's clock restarts after each evaluation, and its window restarts at each log line.
  (A log_every that did not divide the epoch would give one window that spans an
  evaluation, counting steps from before it over the time after it.) Transformers' epochs
  are timed around the same steps. The median over every epoch of every seed is reported,
  so the first epoch's warm-up counts as one figure in three.
Seeds alternate which contender goes first, so a drift of the machine hits both alike.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import ON_VALID_SPLIT, REPO, SHARED, cli
from bertpretrain.training import checkpoint

sys.path.insert(0, str(REPO / "scripts"))
from wikitext_task import make_task  # noqa: E402

# GLUE's layout, wikitext_task's kind. Tasks tiny learns, as a score difference at chance
# says nothing about the implementations: the single-sentence task is `number` (85 dev
# accuracy; on `single`, word order, both contenders sit at chance), the pair task `words`
# (60; on `pair`, next sentence, both sit at chance).
TASKS = (("sst2", "number"), ("rte", "words"))
BATCH = 32  # BERT's fine-tuning batch (conf/trainer/finetune.yaml), passed to fix an epoch
OURS = "bertpretrain finetune (command)"
THEIRS = "transformers BertForSequenceClassification (sdpa)"
PADDED = "transformers, batches padded to max_len (run_glue's default)"
STEP_LINE = re.compile(r"step (\d+)/(\d+)\s.*?([\d.]+) seq/s")


def pretrain(root: Path, steps: int) -> tuple[Path, Path]:
    """The tiny pretrained run dir, and its transformers export."""
    run, exported = root / "pretrained", root / "exported"
    cli(
        ["train", "model=tiny", *ON_VALID_SPLIT, f"data.root={root}"]
        + [f"trainer.max_steps={steps}", f"hydra.run.dir={run}"],
        root,
    )
    cli(["export", str(run), str(exported)], root)
    return run, exported


def make_tasks(root: Path, examples: int | None) -> dict[str, tuple[Path, int]]:
    """Each task's folder and its train split's size, from WikiText-2's test split."""
    made = {}
    for task, kind in TASKS:
        folder = root / f"task-{task}"
        counts = make_task(SHARED / "wiki.test.tokens", folder, examples, seed=0, kind=kind)
        made[task] = (folder, counts["train"])
    return made


def ours(root: Path, task: str, folder: Path, init: Path, seed: int, per_epoch: int) -> dict:
    """`bertpretrain finetune` as a process: its dev metrics, each epoch's seconds of
    training steps, and the recipe its checkpoint records."""
    out = root / f"ours-{task}-{seed}"
    cli(
        ["finetune", f"task={task}", f"task.dir={folder}", f"init={init}"]
        + [f"trainer.seed={seed}", "speed.precision=fp32", f"trainer.batch_size={BATCH}"]
        + [f"trainer.log_every={per_epoch}", f"hydra.run.dir={out}"],
        root,
    )
    summary = json.loads((out / "summary.json").read_text())
    log = (out / "train.log").read_text()
    seconds = epoch_seconds(log, per_epoch, BATCH)
    recipe = checkpoint.load(checkpoint.resolve(out))["config"]
    return {"metrics": summary["metrics"], "epoch_seconds": seconds, "recipe": recipe}


def epoch_seconds(log: str, per_epoch: int, batch: int) -> list[float]:
    """Each epoch's training time from its log line (one per epoch: log_every = an
    epoch's steps), whose seq/s is the epoch's examples over the epoch's step time."""
    found = [(int(m[1]), float(m[3])) for m in STEP_LINE.finditer(log)]
    if not found or any(step % per_epoch for step, _ in found):
        raise RuntimeError(f"expected one step line per {per_epoch} steps, found {found}")
    return [per_epoch * batch / seq_s for _, seq_s in found]


def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers is not installed: fine-tuning ours only", file=sys.stderr)
        return False
    return True


def one_round(root, task, folder, per_epoch, pretrained, seed, recipe, compare) -> dict:
    """Both contenders on one task and seed; an odd seed runs transformers first.
    Transformers takes the recipe our run recorded: `recipe`, that of an earlier round,
    or (in the first round, where ours goes first) this round's."""
    from benchmarks import finetune_hf

    run, exported = pretrained
    figures = {}
    order = [OURS, THEIRS, PADDED] if seed % 2 == 0 else [PADDED, THEIRS, OURS]
    for contender in order:
        if contender == OURS:
            figures[OURS] = ours(root, task, folder, run, seed, per_epoch)
        elif compare:
            recipe = recipe or figures[OURS]["recipe"]
            figures[contender] = finetune_hf.fine_tune(
                exported, run, task, folder, recipe, seed, pad=contender == PADDED
            )
    return figures


def bench_finetune(steps: int = 300, seeds: int = 3, examples: int | None = None) -> list[dict]:
    """Per task and contender: the median dev score over `seeds` seeds and the median
    time per epoch, from one tiny run pretrained for `steps` steps. `examples` caps each
    task's train split (dev gets a third of it): for smoke tests."""
    compare = has_transformers()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pretrained = pretrain(root, steps)
        for task, (folder, train_size) in make_tasks(root, examples).items():
            per_epoch = train_size // BATCH
            rounds: list[dict] = []
            for seed in range(seeds):
                recipe = rounds[0][OURS]["recipe"] if rounds else None
                rounds.append(
                    one_round(root, task, folder, per_epoch, pretrained, seed, recipe, compare)
                )
            kind = dict(TASKS)[task]
            what = f"finetune {task} ({kind}) tiny@{steps}"
            for contender in (OURS, THEIRS, PADDED) if compare else (OURS,):
                rows.append(row(what, contender, [r[contender] for r in rounds], per_epoch))
    return rows


def row(what: str, contender: str, runs: list[dict], per_epoch: int) -> dict:
    """One contender's medians over its runs (seeds), each run's figures kept."""
    metric = next(iter(runs[0]["metrics"]))  # the task's first metric: accuracy here
    scores = [r["metrics"][metric] for r in runs]
    seconds = [r["epoch_seconds"] for r in runs]
    epoch = statistics.median(s for per_seed in seconds for s in per_seed)
    return {
        "what": what,
        "contender": contender,
        "metric": metric,
        "dev_score": statistics.median(scores),
        "epoch_seconds": epoch,
        "seq_per_s": per_epoch * BATCH / epoch,
        "steps_per_epoch": per_epoch,
        "dev_scores": scores,
        "epoch_seconds_per_seed": seconds,
    }


def print_ratios(rows: list[dict]) -> None:
    """Per task: transformers' time per epoch over ours, and our dev score minus theirs
    in points, against the issue's goals."""
    by_what: dict[str, dict[str, dict]] = {}
    for r in rows:
        if "dev_score" in r:
            by_what.setdefault(r["what"], {})[r["contender"]] = r
    for what, found in by_what.items():
        for name, theirs in ((THEIRS, found.get(THEIRS)), (PADDED, found.get(PADDED))):
            if theirs is None:
                continue
            mine = found[OURS]
            speedup = theirs["epoch_seconds"] / mine["epoch_seconds"]
            points = 100 * (mine["dev_score"] - theirs["dev_score"])
            print(
                f"{what}: time per epoch {name} / ours = {speedup:.2f}x (goal >= 2); dev "
                f"{mine['metric']} ours - them = {points:+.1f} points (goal within 1)"
            )
