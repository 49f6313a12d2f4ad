"""GLUE's metrics, its submission files and the score table of `bertpretrain glue`."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import Exited, one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as sk

from bertpretrain.score_table import format_table, score_table
from bertpretrain.scores import METRICS, compute, write_submission

# --- metrics against hand-checked cases -------------------------------------------------


def test_matthews_correlation_of_a_known_confusion_matrix():
    # TP=3 FN=1 FP=1 TN=3: (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    #                    = (9 - 1) / sqrt(4 * 4 * 4 * 4) = 8 / 16 = 0.5
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    predictions = [1, 1, 1, 0, 1, 0, 0, 0]
    assert compute(["matthews_correlation"], predictions, labels) == {
        "matthews_correlation": pytest.approx(0.5)
    }


def test_f1_counts_class_1_as_the_positive_one():
    # TP=2 FP=1 FN=3: F1 = 2TP / (2TP + FP + FN) = 4 / 8 = 0.5 (precision 2/3, recall 2/5);
    # accuracy: TP + TN = 2 + 1 of 7 (with class 0 positive F1 would be 2/7, not 0.5)
    labels = [1, 1, 1, 1, 1, 0, 0]
    predictions = [1, 1, 0, 0, 0, 1, 0]
    scores = compute(["f1", "accuracy"], predictions, labels)
    assert scores == {"f1": pytest.approx(0.5), "accuracy": pytest.approx(3 / 7)}
    assert list(scores) == ["f1", "accuracy"]  # the order asked for


def test_pearson_of_a_linear_pair_and_spearman_of_a_monotone_one():
    x = np.array([0.5, 1.0, 2.0, 4.0, 5.5])
    assert compute(["pearson"], 2 * x + 1, x)["pearson"] == pytest.approx(1.0)
    assert compute(["pearson"], -3 * x, x)["pearson"] == pytest.approx(-1.0)
    # x**3 is not linear in x (Pearson < 1) but keeps its order (Spearman = 1)
    scores = compute(["pearson", "spearmanr"], x**3, x)
    assert scores["spearmanr"] == pytest.approx(1.0)
    assert scores["pearson"] < 0.99


def test_metrics_are_plain_floats():
    scores = compute(list(METRICS["cola"] + METRICS["mrpc"]), [0, 1, 1], [0, 1, 0])
    scores |= compute(list(METRICS["stsb"]), [0.1, 0.5, 0.2], [1.0, 3.0, 2.0])
    assert all(type(value) is float for value in scores.values()), scores


def test_degenerate_inputs_give_documented_values_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning the library lets through fails here
        constant = compute(["pearson", "spearmanr"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
        one = compute(["pearson", "spearmanr"], [1.0], [2.0])
        assert all(math.isnan(v) for v in [*constant.values(), *one.values()])
        # one class on both sides: MCC 0 (scikit-learn's definition); no positive: F1 0
        assert compute(["matthews_correlation"], [1, 1, 1], [1, 1, 1]) == {
            "matthews_correlation": 0.0
        }
        assert compute(["f1"], [0, 0], [0, 0]) == {"f1": 0.0}


def test_f1_of_a_task_with_more_than_two_classes_is_one_clear_error():
    message = one_line_error(lambda: compute(["f1"], [0, 1, 2], [0, 2, 2]))
    assert "2-class" in message and "accuracy" in message


def test_unknown_metric_and_empty_split_are_one_clear_error():
    assert "use one of" in one_line_error(lambda: compute(["acc"], [1], [1]))
    assert "empty" in one_line_error(lambda: compute(["accuracy"], [], []))


classes = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40)
floats = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
pairs = st.lists(st.tuples(floats, floats), min_size=2, max_size=40)


@settings(max_examples=40, deadline=None)
@given(pairs=classes)
def test_classification_metrics_are_scikit_learns(pairs):
    predictions, labels = map(list, zip(*pairs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's own warnings on degenerate draws
        expected = {
            "accuracy": sk.accuracy_score(labels, predictions),
            "f1": sk.f1_score(labels, predictions, zero_division=0.0),
            "matthews_correlation": sk.matthews_corrcoef(labels, predictions),
        }
    assert compute(list(expected), predictions, labels) == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(pairs=pairs)
def test_correlations_are_scipys(pairs):
    predictions, labels = map(np.array, zip(*pairs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {
            "pearson": stats.pearsonr(predictions, labels)[0],
            "spearmanr": stats.spearmanr(predictions, labels)[0],
        }
    assert compute(list(expected), predictions, labels) == pytest.approx(expected, nan_ok=True)


# --- submission files ---------------------------------------------------------------------


def test_classification_submission_names_each_label(tmp_path):
    path = tmp_path / "MNLI-m.tsv"
    names = ["entailment", "neutral", "contradiction"]
    write_submission(path, [0, 1, 2], np.array([0, 2, 1]), names)
    assert path.read_bytes() == (
        b"index\tprediction\n0\tentailment\n1\tcontradiction\n2\tneutral\n"
    )
    assert os.listdir(tmp_path) == ["MNLI-m.tsv"]  # no temp file left behind


def test_regression_submission_has_three_decimals(tmp_path):
    path = tmp_path / "STS-B.tsv"
    write_submission(path, [7, 8, 9, 10], [0.12345, 4.9996, -0.0001, 3])
    assert path.read_bytes() == b"index\tprediction\n7\t0.123\n8\t5.000\n9\t0.000\n10\t3.000\n"


# --- the score table ------------------------------------------------------------------------

# Per init, task and metric the three seeds' values; the medians, spreads and scores that the
# tests expect are worked out beside them.
RUNS = {
    "ckpt/a.pt": {
        "mrpc": {"f1": [0.88, 0.90, 0.86], "accuracy": [0.80, 0.84, 0.82]},  # .88, .82: .85
        "mnli": {"accuracy": [0.80, 0.78, 0.82], "accuracy_mm": [0.81, 0.83, 0.79]},  # .805
        "rte": {"accuracy": [0.60, 0.70, 0.65]},  # .65
    },  # average (.85 + .805 + .65) / 3 = .768333...
    None: {
        "mrpc": {"f1": [0.80, 0.81, 0.82], "accuracy": [0.70, 0.72, 0.74]},  # .81, .72: .765
        "mnli": {"accuracy": [0.60, 0.62, 0.61], "accuracy_mm": [0.63, 0.61, 0.62]},  # .615
        "rte": {"accuracy": [0.50, 0.55, 0.53]},  # .53
    },  # average (.765 + .615 + .53) / 3 = .636666...
}


def write_summary(run: Path, **fields) -> Path:
    run.mkdir(parents=True)
    path = run / "summary.json"
    path.write_text(json.dumps(fields))
    return path


def finetune_summary(run: Path, task: str, init: str | None, seed: int, metrics: dict) -> Path:
    return write_summary(
        run, command="finetune", task=task, init=init, seed=seed, metrics=metrics,
        metrics_epoch="last",
    )  # fmt: skip


@pytest.fixture
def runs(tmp_path) -> Path:
    """RUNS as two Hydra multirun dirs (one job dir per task and seed), beside a pretraining
    run whose summary is not a fine-tuning one, and a link to a run dir."""
    root = tmp_path / "multirun"
    for i, (init, tasks) in enumerate(RUNS.items()):
        job = 0
        for task, metrics in tasks.items():
            for seed in range(3):
                values = {name: seeds[seed] for name, seeds in metrics.items()}
                finetune_summary(root / f"sweep{i}" / str(job), task, init, seed, values)
                job += 1
    write_summary(root / "pretrain", train_mlm_loss=2.5, val_mlm_loss=2.7)
    (root / "latest").symlink_to(root / "sweep0" / "0", target_is_directory=True)
    return root


def test_table_reports_the_median_spread_and_scores_per_init(runs):
    table = score_table(runs)
    assert table.runs == 18  # the pretraining run is skipped, the linked run counted once
    by_init = {group.init: group for group in table.inits}
    assert set(by_init) == {"ckpt/a.pt", None}
    a = by_init["ckpt/a.pt"]
    assert [task.task for task in a.tasks] == ["mrpc", "mnli", "rte"]  # GLUE's order
    mrpc, mnli, rte = a.tasks
    f1, accuracy = mrpc.metrics
    assert (f1.name, f1.median, f1.min, f1.max, f1.seeds) == ("f1", 0.88, 0.86, 0.90, 3)
    assert (accuracy.median, accuracy.min, accuracy.max) == (0.82, 0.80, 0.84)
    assert mrpc.score == pytest.approx(0.85)
    assert [m.name for m in mnli.metrics] == ["accuracy", "accuracy_mm"]
    assert [m.median for m in mnli.metrics] == [0.80, 0.81]
    assert mnli.score == pytest.approx(0.805)
    assert (rte.score, rte.metrics[0].min, rte.metrics[0].max) == (0.65, 0.60, 0.70)
    assert a.average == pytest.approx((0.85 + 0.805 + 0.65) / 3)
    assert by_init[None].average == pytest.approx((0.765 + 0.615 + 0.53) / 3)
    assert [t.score for t in by_init[None].tasks] == pytest.approx([0.765, 0.615, 0.53])


def test_text_table_shows_scores_x100_with_one_decimal(runs):
    text = format_table(score_table(runs), "text")
    rows = [line.split() for line in text.splitlines()]
    assert ["init:", "ckpt/a.pt", "(dev", "metrics", "of", "the", "last", "epoch,", "x100)"] in rows
    assert ["mrpc", "85.0", "f1", "88.0", "86.0", "90.0", "3"] in rows
    assert ["accuracy", "82.0", "80.0", "84.0", "3"] in rows  # mrpc's second metric, below
    assert ["mnli", "80.5", "accuracy", "80.0", "78.0", "82.0", "3"] in rows
    assert ["accuracy_mm", "81.0", "79.0", "83.0", "3"] in rows
    assert ["average", "76.8"] in rows and ["average", "63.7"] in rows
    assert ["init:", "none", "(dev", "metrics", "of", "the", "last", "epoch,", "x100)"] in rows


def test_markdown_table_is_a_github_table(runs):
    text = format_table(score_table(runs), "markdown")
    lines = text.splitlines()
    assert "### init: `ckpt/a.pt` (dev metrics of the last epoch, x100)" in lines
    assert lines.count("| task | score | metric | median | min | max | seeds |") == 2
    assert lines.count("|:--|--:|:--|--:|--:|--:|--:|") == 2
    assert "| mrpc | 85.0 | f1 | 88.0 | 86.0 | 90.0 | 3 |" in lines
    assert "|  |  | accuracy | 82.0 | 80.0 | 84.0 | 3 |" in lines
    assert "| **average** | **76.8** | | | | | |" in lines
    table_rows = [line for line in lines if line.startswith("|")]
    assert all(line.count("|") == 8 for line in table_rows)  # 7 cells on every row


def test_json_table_keeps_the_numbers_unrounded(runs):
    data = json.loads(format_table(score_table(runs), "json"))
    a = next(group for group in data["inits"] if group["init"] == "ckpt/a.pt")
    assert a["average"] == pytest.approx((0.85 + 0.805 + 0.65) / 3)
    assert a["average"] != round(a["average"], 3)
    mnli = next(task for task in a["tasks"] if task["task"] == "mnli")
    assert mnli["metrics"][1] == {
        "name": "accuracy_mm", "median": 0.81, "min": 0.79, "max": 0.83, "seeds": 3,
    }  # fmt: skip
    assert data["runs"] == 18


def test_a_nan_seed_shows_as_nan_and_json_null(tmp_path):
    finetune_summary(tmp_path / "0", "stsb", None, 0, {"pearson": 0.8, "spearmanr": 0.7})
    finetune_summary(tmp_path / "1", "stsb", None, 1, {"pearson": 0.9, "spearmanr": None})
    table = score_table(tmp_path)
    (stsb,) = table.inits[0].tasks
    assert stsb.metrics[0].median == pytest.approx(0.85)
    assert math.isnan(stsb.metrics[1].median) and math.isnan(stsb.score)
    data = json.loads(format_table(table, "json"))  # strict JSON: null, never NaN
    assert data["inits"][0]["tasks"][0]["metrics"][1]["median"] is None


def test_last_and_best_epoch_runs_are_separate_tables(tmp_path):
    finetune_summary(tmp_path / "0", "rte", "x", 0, {"accuracy": 0.6})
    write_summary(
        tmp_path / "1", command="finetune", task="rte", init="x", seed=0,
        metrics={"accuracy": 0.7}, metrics_epoch="best",
    )  # fmt: skip
    groups = score_table(tmp_path).inits
    assert [(g.metrics_epoch, g.average) for g in groups] == [("best", 0.7), ("last", 0.6)]


def test_a_folder_without_fine_tuning_runs_is_one_clear_error(tmp_path):
    assert "no fine-tuning runs" in one_line_error(lambda: score_table(tmp_path))
    write_summary(tmp_path / "pretrain", train_mlm_loss=2.5)
    message = one_line_error(lambda: score_table(tmp_path))
    assert "no fine-tuning runs" in message and "pass the folder" in message


def test_a_damaged_summary_is_named_in_one_line(tmp_path):
    good = finetune_summary(tmp_path / "0", "rte", None, 0, {"accuracy": 0.6})
    bad = tmp_path / "1" / "summary.json"
    bad.parent.mkdir()
    bad.write_text('{"command": "finet')
    assert str(bad) in one_line_error(lambda: score_table(tmp_path))
    bad.write_bytes(b"\xff\xfe")
    assert str(bad) in one_line_error(lambda: score_table(tmp_path))
    bad.write_text(json.dumps({**json.loads(good.read_text()), "seed": "one"}))
    message = one_line_error(lambda: score_table(tmp_path))
    assert str(bad) in message and "'seed'" in message


def test_a_missing_metric_or_a_repeated_seed_is_one_clear_error(tmp_path):
    finetune_summary(tmp_path / "0", "mnli", None, 0, {"accuracy": 0.8, "accuracy_mm": 0.8})
    lacking = finetune_summary(tmp_path / "1", "mnli", None, 1, {"accuracy": 0.8})
    message = one_line_error(lambda: score_table(tmp_path))
    assert str(lacking) in message and "accuracy_mm" in message
    lacking.write_text(lacking.read_text().replace('"seed": 1', '"seed": 0'))
    assert "seed 0" in one_line_error(lambda: score_table(tmp_path))


def test_unknown_format_is_one_clear_error(runs):
    table = score_table(runs)
    assert "markdown" in one_line_error(lambda: format_table(table, "html"))


# --- the command ------------------------------------------------------------------------------


def test_glue_command_prints_the_table(runs, tmp_path, cli_env):
    result = run_cli(["glue", str(runs)], tmp_path, cli_env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["rte", "65.0", "accuracy", "65.0", "60.0", "70.0", "3"] in rows
    assert ["average", "76.8"] in rows


def test_glue_command_on_an_empty_folder_exits_2_with_one_line(tmp_path, cli_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["glue", str(empty)], tmp_path, cli_env, timeout=120)
    line = Exited(result.returncode, result.stdout, result.stderr).error_line()
    assert "no fine-tuning runs" in line and str(empty) in line
    assert result.stdout == ""
