"""`bertpretrain finetune`: a pretrained run fine-tuned on GLUE-layout folders made here
from WikiText (scripts/wikitext_task.py, RTE's layout) and by hand (STS-B's), run as real
processes: the summary's metrics, the submission files, TensorBoard, `glue`, `encode` and
`export` of the fine-tuned run, resume after kill -9, and one-line errors.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE_THREAD, REPO, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertpretrain import scores
from bertpretrain.training import checkpoint

sys.path.insert(0, str(REPO / "scripts"))
from wikitext_task import make_task  # noqa: E402

FAST = ["trainer.batch_size=16", "trainer.epochs=2", "data.max_len=64", "speed.precision=fp32"]


@pytest.fixture(scope="module")
def env(cli_env) -> dict[str, str]:
    return cli_env | ONE_THREAD


@pytest.fixture(scope="module")
def rte_dir(tmp_path_factory, wikitext_dir) -> Path:
    """RTE's layout: does sentence2 follow sentence1 in the article? From the test split,
    which the tiny run (trained on the valid split) has not read."""
    out = tmp_path_factory.mktemp("wikitext-rte")
    make_task(wikitext_dir / "wiki.test.tokens", out, examples=96, seed=0)
    return out


@pytest.fixture(scope="module")
def stsb_dir(tmp_path_factory, wikitext_dir) -> Path:
    """STS-B's layout (10 columns, a 0-5 score): the score is the share of sentence1's
    words that sentence2 shares, times 5, over WikiText sentences and their shuffles."""
    out = tmp_path_factory.mktemp("wikitext-stsb")
    lines = (wikitext_dir / "wiki.test.tokens").read_text(encoding="utf-8").splitlines()
    sentences = [s for s in (line.strip() for line in lines) if 8 < len(s.split()) < 40]
    rng = np.random.default_rng(0)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    for name, count in (("train", 64), ("dev", 32), ("test", 16)):
        rows = [header + ("\tscore" if name != "test" else "")]
        for i in range(count):
            a = sentences[rng.integers(len(sentences))].split()
            keep = rng.random()
            b = [w if rng.random() < keep else "the" for w in a]
            score = 5 * sum(x == y for x, y in zip(a, b)) / len(a)
            row = f"{i}\tmain-news\tx\t2012\t{i}\tnone\tnone\t{' '.join(a)}\t{' '.join(b)}"
            rows.append(row + (f"\t{score:.3f}" if name != "test" else ""))
        (out / f"{name}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def rte_run(tmp_path_factory, tiny_run, rte_dir, env) -> Path:
    cwd = tmp_path_factory.mktemp("finetune-rte")
    args = ["finetune", "task=rte", f"task.dir={rte_dir}", f"init={tiny_run}", *FAST]
    result = run_cli([*args, "hydra.run.dir=run"], cwd, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


def test_a_finetuned_run_reports_glue_metrics_curves_and_a_submission_file(
    rte_run, rte_dir, tiny_run
):
    summary = json.loads((rte_run / "summary.json").read_text())
    assert summary["command"] == "finetune" and summary["task"] == "rte"
    # the checkpoint init= resolved to, which a moving `outputs/latest` would not say
    newest = checkpoint.list_checkpoints(tiny_run)[-1]
    assert Path(summary["init"]).resolve() == newest.resolve()
    assert set(summary["metrics"]) == {"accuracy"}
    assert 0.0 <= summary["metrics"]["accuracy"] <= 1.0
    assert summary["metrics_epoch"] == "last" and summary["epoch"] == 2
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert summary["history"][-1]["accuracy"] == summary["metrics"]["accuracy"]
    # 96 train examples at batch 16: 6 steps an epoch
    assert summary["steps"] == 12

    test_rows = (rte_dir / "test.tsv").read_text().splitlines()[1:]
    submitted = Path(summary["predictions"]["test"])
    assert submitted.name == "RTE.tsv" and submitted.parent == rte_run / "predictions"
    lines = submitted.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    assert [line.split("\t")[0] for line in lines[1:]] == [r.split("\t")[0] for r in test_rows]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "not_entailment"}

    acc = EventAccumulator(str(rte_run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/accuracy")] == [6, 12]
    assert [e.step for e in acc.Scalars("train/loss")][-1] == 12
    last = (rte_run / "train.log").read_text().strip().splitlines()[-1]
    assert re.search(r"done: rte, 2 epochs \(12 steps\), dev accuracy 0\.\d{4} \(last epoch", last)


def test_the_dev_accuracy_is_the_one_recomputed_from_the_checkpoint(rte_run, rte_dir):
    """The figure in the summary is what the saved weights give on dev.tsv, through the
    library's metric: no figure comes from anywhere but the model."""
    from bertpretrain.data.classification import encode_split
    from bertpretrain.data.glue import read_task
    from bertpretrain.load import load_model
    from bertpretrain.training.predictions import predict

    loaded = load_model(rte_run)
    assert loaded.task["name"] == "rte"
    state = checkpoint.load(checkpoint.list_checkpoints(rte_run)[-1])
    task = read_task(_task_config("rte", rte_dir))
    dev = encode_split(task.splits["dev"], loaded.tokenizer, 64)
    found = predict(loaded.model, dev, 32, torch.device("cpu"), contextlib.nullcontext)
    summary = json.loads((rte_run / "summary.json").read_text())
    assert scores.compute(["accuracy"], found, dev.labels)["accuracy"] == pytest.approx(
        summary["metrics"]["accuracy"]
    )
    assert state["val_metrics"]["accuracy"] == summary["metrics"]["accuracy"]


def _task_config(name: str, folder: Path):
    from bertpretrain.config import TaskConfig

    kind = "regression" if name == "stsb" else "classification"
    return TaskConfig(name, str(folder), kind, None, None, None)


def test_without_init_a_regression_task_starts_from_random_weights(stsb_dir, tmp_path, env):
    """STS-B's layout, no init=: a vocabulary learnt from the task, Pearson and Spearman,
    and the submission's scores as numbers."""
    args = ["finetune", "task=stsb", f"task.dir={stsb_dir}", *FAST, "hydra.run.dir=run"]
    result = run_cli(args, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["init"] is None and set(summary["metrics"]) == {"pearson", "spearmanr"}
    lines = Path(summary["predictions"]["test"]).read_text().splitlines()
    assert Path(summary["predictions"]["test"]).name == "STS-B.tsv" and len(lines) == 17
    assert all(re.fullmatch(r"\d+\t-?\d+\.\d{3}", line) for line in lines[1:]), lines[:3]
    assert "learning a word vocabulary from the task's train split" in result.stdout + result.stderr


def test_select_best_reports_the_best_epoch_and_predicts_with_its_weights(
    rte_dir, tiny_run, tmp_path, env
):
    args = ["finetune", "task=rte", f"task.dir={rte_dir}", f"init={tiny_run}", *FAST]
    args += ["trainer.epochs=3", "trainer.select=best", "optim.lr=3e-3", "hydra.run.dir=run"]
    result = run_cli(args, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    history = {h["epoch"]: h["accuracy"] for h in summary["history"]}
    best = max(history, key=lambda e: (history[e], -e))  # the first of equal bests
    assert summary["metrics_epoch"] == "best" and summary["epoch"] == best
    assert summary["metrics"]["accuracy"] == history[best]
    kept = checkpoint.load(tmp_path / "run" / checkpoint.SUBDIR / "best.pt")
    assert kept["epoch"] == best


def test_a_sweep_over_seeds_gives_the_glue_table(rte_dir, tiny_run, tmp_path, env):
    args = ["finetune", "-m", "task=rte", f"task.dir={rte_dir}", f"init={tiny_run}", *FAST]
    args += ["trainer.epochs=1", "trainer.seed=0,1,2", "hydra.sweep.dir=sweep"]
    result = run_cli(args, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracies = [
        json.loads((tmp_path / "sweep" / str(job) / "summary.json").read_text())["metrics"][
            "accuracy"
        ]
        for job in range(3)
    ]
    table = run_cli(["glue", "sweep", "--format", "json"], tmp_path, env)
    assert table.returncode == 0, table.stderr
    (init,) = json.loads(table.stdout)["inits"]
    (row,) = init["tasks"]
    (metric,) = row["metrics"]
    assert row["task"] == "rte" and metric["seeds"] == 3
    assert metric["median"] == pytest.approx(float(np.median(accuracies)))
    assert not (tmp_path / "outputs").exists()  # fine-tuning never moves outputs/latest


def test_encode_and_export_take_a_finetuned_run(rte_run, tmp_path, env):
    pytest.importorskip("transformers")
    encoded = run_cli(
        ["encode", "--checkpoint", str(rte_run), "--format", "json", "a crane is flying"],
        tmp_path,
        env,
    )
    assert encoded.returncode == 0, encoded.stderr
    out = tmp_path / "hf"
    exported = run_cli(["export", str(rte_run), str(out)], tmp_path, env)
    assert exported.returncode == 0, exported.stderr
    assert "transformers.BertForSequenceClassification.from_pretrained" in exported.stdout
    from transformers import BertForSequenceClassification

    from bertpretrain.load import load_model

    theirs = BertForSequenceClassification.from_pretrained(out).eval()
    assert theirs.config.id2label == {0: "entailment", 1: "not_entailment"}
    loaded = load_model(rte_run)
    ours = loaded.model.eval()
    ids, lens = loaded.tokenizer.encode_sentences(["the film was released in 2001 ."])
    tokens = torch.tensor([[3, *ids.tolist(), 4]])
    segments = torch.zeros_like(tokens)
    with torch.no_grad():
        expected = ours(tokens, segments, torch.tensor([tokens.shape[1]]))
        got = theirs(input_ids=tokens, token_type_ids=segments).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # and the exported folder reads back as an encoder (its task head is not BERT's)
    again = run_cli(["encode", "--checkpoint", str(out), "a crane is flying"], tmp_path, env)
    assert again.returncode == 0, again.stderr


def test_a_finetuned_run_as_init_gives_its_encoder_with_fresh_pretraining_heads(rte_run):
    from bertpretrain.init_from import init_weights
    from bertpretrain.model.bert import BertForPretraining

    model, _ = init_weights(checkpoint.list_checkpoints(rte_run)[-1])
    theirs = checkpoint.load(checkpoint.list_checkpoints(rte_run)[-1])["model"]
    assert isinstance(model, BertForPretraining)
    for name, tensor in model.bert.state_dict().items():
        assert torch.equal(tensor, theirs[f"bert.{name}"]), name


def test_an_undefined_score_never_wins_the_best_epoch():
    """A collapsed regression head predicts a constant: its correlations are nan. The
    best epoch is then one whose score is defined, and the first of equals."""
    from bertpretrain.training.predictions import chosen_epoch

    nan = float("nan")
    history = [(1, {"pearson": nan, "spearmanr": nan}), (2, {"pearson": 0.2, "spearmanr": 0.4})]
    assert chosen_epoch(history, "best")[0] == 2
    assert chosen_epoch(history[:1], "best")[0] == 1
    assert chosen_epoch([(1, {"accuracy": 0.5}), (2, {"accuracy": 0.5})], "best")[0] == 1


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"task": "mrpc"}, r"looks like|MRPC|columns"),
        ({"remove": "dev.tsv"}, r"dev\.tsv"),
        ({"label": "maybe"}, r"maybe"),
    ],
)
def test_bad_task_folders_are_one_line_and_leave_no_run_dir(
    change, expected, rte_dir, tmp_path, env
):
    folder = tmp_path / "task"
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        text = (rte_dir / name).read_text()
        if name == "dev.tsv" and "label" in change:
            text = text.replace("\tentailment\n", f"\t{change['label']}\n", 1)
        (folder / name).write_text(text)
    if "remove" in change:
        (folder / change["remove"]).unlink()
    task = change.get("task", "rte")
    args = ["finetune", f"task={task}", f"task.dir={folder}", *FAST, "hydra.run.dir=run"]
    result = run_cli(args, tmp_path, env)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertpretrain: error:"), result.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


def test_finetune_overrides_are_checked_before_any_work(tmp_path, env):
    result = run_cli(["finetune", "trainer.epoch=2"], tmp_path, env)
    assert result.returncode == 2
    assert "trainer.epochs" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli(["finetune", "trainer.select=worst"], tmp_path, env)
    assert result.returncode == 2 and "use last or best" in result.stderr


@pytest.mark.slow
def test_kill_9_then_resume_matches_the_uninterrupted_run(
    rte_run, rte_dir, tiny_run, tmp_path, env
):
    run = tmp_path / "run"
    args = ["finetune", "task=rte", f"task.dir={rte_dir}", f"init={tiny_run}", *FAST]
    args += ["trainer.save_every=1", "trainer.keep_last=20", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertpretrain", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        # past the first epoch's validation (step 6), before the end (step 12)
        while not any(checkpoint.step_of(p) >= 7 for p in checkpoint.list_checkpoints(run)):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint 7"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    resumed = run_cli([*args, "trainer.resume=true"], tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours = json.loads((run / "summary.json").read_text())
    reference = json.loads((rte_run / "summary.json").read_text())
    assert ours["metrics"] == reference["metrics"] and ours["history"] == reference["history"]
    mine = checkpoint.load(checkpoint.list_checkpoints(run)[-1])["model"]
    theirs = checkpoint.load(checkpoint.list_checkpoints(rte_run)[-1])["model"]
    for name, tensor in theirs.items():
        assert torch.equal(mine[name], tensor), name
    predicted = (run / "predictions" / "RTE.tsv").read_text()
    assert predicted == (rte_run / "predictions" / "RTE.tsv").read_text()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(rte_dir, tmp_path, cli_env):
    # random weights: init= fixes the architecture, dropout included, and with dropout
    # each rank draws its own masks
    args = ["task=rte", f"task.dir={rte_dir}", *FAST, "model.dropout=0"]
    args += ["trainer.epochs=1", "trainer.log_every=1"]
    single = run_cli(["finetune", *args, "hydra.run.dir=one"], tmp_path, cli_env | ONE_THREAD)
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "bertpretrain", "finetune", *args, "hydra.run.dir=two"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    curves = {}
    for name in ("one", "two"):
        acc = EventAccumulator(str(tmp_path / name / "tensorboard"))
        acc.Reload()
        curves[name] = [e.value for e in acc.Scalars("train/loss")]
    assert len(curves["two"]) == 6
    assert curves["two"] == pytest.approx(curves["one"], rel=1e-4)


def test_max_len_null_is_128_or_the_pretrained_runs_own_when_shorter(tiny_run, rte_dir):
    from bertpretrain.config_compose import compose
    from bertpretrain.training.recipe import with_max_len

    def max_len(*overrides: str) -> int:
        cfg = compose([f"task.dir={rte_dir}", *overrides], "finetune")[0]
        return with_max_len(cfg).data.max_len

    assert max_len() == 128  # random weights: BERT's length
    assert max_len(f"init={tiny_run}") == 64  # the tiny run trained at 64: no untrained rows
    assert max_len(f"init={tiny_run}", "data.max_len=32") == 32


def test_validation_time_does_not_count_as_training_time(monkeypatch):
    """The seq/s of a log window that spans an epoch's validation counts the training steps'
    time alone, before and after it."""
    from bertpretrain.training import progress as progress_module

    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = progress_module.Progress(4, 0, 10, None, "cpu", ("loss",))
    for step in range(4):
        clock[0] += 1.0  # each step takes 1 s
        progress.add(torch.tensor([0.5]))
        if step == 1:
            with progress.paused():
                clock[0] += 100.0  # a validation
    progress.report(4, 4, 0.1)
    assert progress.speeds == [pytest.approx(40 / 4.0)]


def test_every_glue_task_fine_tunes_end_to_end_with_its_metrics_and_files(tmp_path, monkeypatch):
    """The nine GLUE layouts of test_glue_data, a few rows each, through the whole run in
    this process: each task's metric names (MNLI's mismatched dev split as accuracy_mm)
    and the submission files the leaderboard expects."""
    from test_glue_data import glue_folder

    from bertpretrain.config_compose import compose
    from bertpretrain.data.glue_tasks import TASKS
    from bertpretrain.training.finetune import finetune

    monkeypatch.chdir(tmp_path)
    for name, spec in TASKS.items():
        folder = glue_folder(tmp_path, name)
        overrides = [f"task={name}", f"task.dir={folder}", "trainer.batch_size=1"]
        overrides += ["trainer.epochs=1", "data.max_len=32", "speed.precision=fp32"]
        summary = finetune(compose(overrides, "finetune")[0], tmp_path / f"run-{name}")
        expected = list(spec.metrics) + (["accuracy_mm"] if name == "mnli" else [])
        assert list(summary["metrics"]) == expected, name
        files = sorted(Path(p).name for p in summary["predictions"].values())
        assert files == sorted(spec.submissions), name


def test_runs_lists_a_finetuned_run_with_its_dev_metrics(rte_run, tmp_path, env):
    listed = run_cli(["runs", str(rte_run.parent)], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"fine-tuned on rte: dev accuracy 0\.\d{3}", listed.stdout), listed.stdout


def test_a_run_that_reports_its_best_epoch_is_read_at_it(rte_run, tmp_path):
    """encode, export and init= of a run dir read the weights its summary reports: with
    trainer.select=best, best.pt's; a checkpoint file named outright is read as it is."""
    import shutil

    from bertpretrain.init_from import find_init
    from bertpretrain.load import load_model

    run = shutil.copytree(rte_run, tmp_path / "run", symlinks=True)
    last = checkpoint.resolve(run)
    weights = checkpoint.load(last)["model"]
    best = {
        name: value + 1.0 if value.is_floating_point() else value for name, value in weights.items()
    }
    checkpoint.save({"epoch": 1, "model": best}, run / checkpoint.SUBDIR / checkpoint.BEST)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics_epoch"] == "last"
    for name, value in load_model(run).model.state_dict().items():  # select=last: the last
        assert torch.equal(value, weights[name]), name

    (run / "summary.json").write_text(json.dumps(summary | {"metrics_epoch": "best"}))
    loaded = load_model(run)
    assert loaded.source.name == checkpoint.BEST and loaded.task == checkpoint.load(last)["task"]
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, best[name]), name
    assert find_init(str(run)).name == checkpoint.BEST
    explicit = load_model(last).model.state_dict()
    assert all(torch.equal(explicit[name], weights[name]) for name in weights)
