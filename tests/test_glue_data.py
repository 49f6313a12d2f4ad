"""Downstream-task data: GLUE's nine layouts and the user's own files read into splits
(data/glue.py), and their examples tokenised and batched (data/classification.py).

The GLUE folders are built here, in tmp_path, a few real rows per task in the exact
layout of the GLUE download script's files (header rows, column orders, CoLA's missing
header, MRPC's byte-order mark, the stray quotes), never copied from GLUE's data."""

from __future__ import annotations

import json
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from hypothesis import given, settings
from hypothesis import strategies as st

from bertpretrain.config import TaskConfig
from bertpretrain.data.batches import batch_loader
from bertpretrain.data.classification import (
    ClassificationStream,
    encode_split,
    eval_batches,
    fit_lengths,
)
from bertpretrain.data.glue import read_task
from bertpretrain.data.glue_tasks import TASKS
from bertpretrain.data.task_splits import Split
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import CLS_ID, PAD_ID, RESERVED, SEP_ID
from bertpretrain.encode import Encoder, _wrap

# --- GLUE's layouts -----------------------------------------------------------------------

# MNLI's and STS-B's text columns as the first lines of GLUE's files spell them (compare
# `head -1 MNLI/train.tsv`): stated here, not taken from data/glue_tasks.py, so that a wrong
# column there fails these tests instead of being copied into the files they read.
MNLI_TEXT = (  # noqa: SIM905 (the file's own line reads against the file)
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2"
).split("\t")
STSB_TEXT = (  # noqa: SIM905
    "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
).split("\t")
MRPC = ["#1 ID", "#2 ID", "#1 String", "#2 String"]
PAIR = ["index", "sentence1", "sentence2"]


def mnli_row(index: str, a: str, b: str, *labels: str) -> list[str]:
    parse = "( ( x ) )"
    return [index, "31193", f"{index}n", "fiction", parse, parse, parse, parse, a, b, *labels]


def stsb_row(index: str, a: str, b: str, *score: str) -> list[str]:
    return [index, "main-captions", "MSRvid", "2012test", "0001", "none", "none", a, b, *score]


# Each task's files as GLUE's download script writes them: {file: (header or None, rows)}.
GLUE = {
    "cola": {
        "train.tsv": (
            None,
            [
                ["gj04", "1", "", "Our friends won't buy this analysis, let alone the next one."],
                ["gj04", "0", "*", "They drank the pub."],
                ["clc95", "1", "", 'The "sailors" rode the breeze clear of the rocks.'],
            ],
        ),
        "dev.tsv": (None, [["gj04", "0", "*", "The more we study verbs, the crazier."]]),
        "test.tsv": (["index", "sentence"], [["0", "Bill whistled past the house."]]),
    },
    "sst2": {
        "train.tsv": (
            ["sentence", "label"],
            [["hide new secretions from the parental units ", "0"], ['a "gem" ', "1"]],
        ),
        "dev.tsv": (["sentence", "label"], [["it 's a charming journey . ", "1"]]),
        "test.tsv": (["index", "sentence"], [["0", "uneasy mishmash of styles ."]]),
    },
    "mrpc": {
        "train.tsv": (
            ["\ufeffQuality", *MRPC],  # Microsoft's file starts with a byte-order mark
            [
                ["1", "702876", "702977", 'Amrozi called him " the witness " .', "He said so ."],
                ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "It sold it ."],
            ],
        ),
        "dev.tsv": (["\ufeffQuality", *MRPC], [["1", "1", "2", "He left .", "He went ."]]),
        "test.tsv": (["index", *MRPC], [["0", "1089874", "1089925", "PCCW 's chief .", "So ."]]),
    },
    "stsb": {
        "train.tsv": (
            [*STSB_TEXT, "score"],
            [
                stsb_row("0", "A plane is taking off.", "An air plane is taking off.", "5.000"),
                stsb_row("1", "A man plays a flute.", "A man plays a large flute.", "3.800"),
            ],
        ),
        "dev.tsv": ([*STSB_TEXT, "score"], [stsb_row("0", "A man sings.", "A dog runs.", "0.0")]),
        "test.tsv": (STSB_TEXT, [stsb_row("0", "A girl styles hair.", "A girl brushes hair.")]),
    },
    "qqp": {
        "train.tsv": (
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [
                ["133273", "213221", "213222", "How is life as a math student?", "Why?", "0"],
                ["402555", "536040", "536041", "How do I control anger?", "How to calm?", "1"],
            ],
        ),
        "dev.tsv": (
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [["201359", "303345", "303346", "Why are people rude?", "Why rude?", "1"]],
        ),
        "test.tsv": (
            ["id", "question1", "question2"],
            [["0", "Why am I lonely?", "What is 23^24 mod 24?"], ["1", "How?", "Why?"]],
        ),
    },
    "mnli": {
        "train.tsv": (
            [*MNLI_TEXT, "label1", "gold_label"],
            [
                mnli_row(
                    "0", "Cream skimming has two dimensions.", "Product works.", *["neutral"] * 2
                ),
                mnli_row("1", "You know during the season.", "You lose.", *["entailment"] * 2),
                mnli_row("2", "One of our number will go.", "Nobody goes.", *["contradiction"] * 2),
            ],
        ),
        "dev_matched.tsv": (
            [*MNLI_TEXT, *[f"label{i}" for i in range(1, 6)], "gold_label"],
            [mnli_row("0", "The new rights are nice.", "Everyone likes them.", *["neutral"] * 6)],
        ),
        "dev_mismatched.tsv": (
            [*MNLI_TEXT, *[f"label{i}" for i in range(1, 6)], "gold_label"],
            [
                mnli_row("0", "Your contribution helped.", "It helped.", *["entailment"] * 6),
                mnli_row("1", "Yes.", "No.", *["contradiction"] * 6),
            ],
        ),
        "test_matched.tsv": (MNLI_TEXT, [mnli_row("0", "Hierbas is a name.", "It is a name.")]),
        "test_mismatched.tsv": (MNLI_TEXT, [mnli_row("7", "What a day.", "A day.")]),
    },
    "qnli": {
        "train.tsv": (
            ["index", "question", "sentence", "label"],
            [
                [
                    "0",
                    "When did Digimon Tamers begin?",
                    "Unlike the seasons before it.",
                    "not_entailment",
                ],
                ["1", "What is the capital?", "The capital is Paris.", "entailment"],
            ],
        ),
        "dev.tsv": (
            ["index", "question", "sentence", "label"],
            [["0", "What came into force?", "The treaty came into force.", "entailment"]],
        ),
        "test.tsv": (
            ["index", "question", "sentence"],
            [["0", "What organization is responsible?", "The IUCN is."]],
        ),
    },
    "rte": {
        "train.tsv": (
            [*PAIR, "label"],
            [
                [
                    "0",
                    "No Weapons of Mass Destruction Found in Iraq Yet.",
                    "Weapons Found.",
                    "not_entailment",
                ],
                ["1", "A place of sorrow became a place of celebration.", "A place.", "entailment"],
            ],
        ),
        "dev.tsv": (
            [*PAIR, "label"],
            [["0", "Dana Reeve died.", "Christopher died.", "not_entailment"]],
        ),
        "test.tsv": (PAIR, [["0", "Mangla was an alarm.", "Mangla is a dam."]]),
    },
    "wnli": {
        "train.tsv": (
            [*PAIR, "label"],
            [
                [
                    "0",
                    "I stuck a pin through a carrot. It had a hole.",
                    "The carrot had a hole.",
                    "1",
                ],
                [
                    "1",
                    "John couldn't see the stage with Billy in front of him.",
                    "John is short.",
                    "0",
                ],
            ],
        ),
        "dev.tsv": (
            [*PAIR, "label"],
            [["0", "The drain is clogged with hair.", "The hair is clogged.", "0"]],
        ),
        "test.tsv": (
            PAIR,
            [["0", "Maude and Dora had seen the trains.", "The trains had seen it."]],
        ),
    },
}

# What each task's train split reads as: (first a, first b, labels as in the files).
TRAIN = {
    "cola": ("Our friends won't buy this analysis, let alone the next one.", None, ["1", "0", "1"]),
    "sst2": ("hide new secretions from the parental units ", None, ["0", "1"]),
    "mrpc": ('Amrozi called him " the witness " .', "He said so .", ["1", "0"]),
    "stsb": ("A plane is taking off.", "An air plane is taking off.", [5.0, 3.8]),
    "qqp": ("How is life as a math student?", "Why?", ["0", "1"]),
    "mnli": (
        "Cream skimming has two dimensions.",
        "Product works.",
        ["neutral", "entailment", "contradiction"],
    ),
    "qnli": (
        "When did Digimon Tamers begin?",
        "Unlike the seasons before it.",
        ["not_entailment", "entailment"],
    ),
    "rte": (
        "No Weapons of Mass Destruction Found in Iraq Yet.",
        "Weapons Found.",
        ["not_entailment", "entailment"],
    ),
    "wnli": (
        "I stuck a pin through a carrot. It had a hole.",
        "The carrot had a hole.",
        ["1", "0"],
    ),
}


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> Path:
    """A GLUE file: tab-separated, no quoting, a header row unless `header` is None."""
    lines = ([header] if header else []) + rows
    path.write_text("".join("\t".join(r) + "\n" for r in lines), encoding="utf-8")
    return path


def glue_folder(root: Path, name: str, skip: tuple[str, ...] = ()) -> Path:
    folder = root / name
    folder.mkdir()
    for file, (header, rows) in GLUE[name].items():
        if file not in skip:
            write_tsv(folder / file, header, rows)
    return folder


def task(name: str, directory: Path | str | None, **fields) -> TaskConfig:
    values = {"kind": "classification", "text_a": None, "text_b": None, "label": None}
    return TaskConfig(
        name=name, dir=None if directory is None else str(directory), **values | fields
    )


def labels_of(data, split: str) -> list:
    labels = data.splits[split].labels
    return labels.tolist() if data.label_names is None else [data.label_names[i] for i in labels]


@pytest.mark.parametrize("name", list(GLUE))
def test_every_glue_layout_reads_its_texts_labels_and_index(tmp_path, name):
    data = read_task(task(name, glue_folder(tmp_path, name)))
    a, b, labels = TRAIN[name]
    train = data.splits["train"]
    assert (train.text_a[0], train.text_b and train.text_b[0]) == (a, b)
    read = labels_of(data, "train")
    assert read == (pytest.approx(labels) if name == "stsb" else labels)
    assert train.index == [str(i) for i in range(len(labels))]
    spec = TASKS[name]
    assert set(data.splits) == {"train", *spec.dev_splits, *spec.test_splits}
    assert data.dev_splits == spec.dev_splits and data.metrics == spec.metrics
    for test in spec.test_splits:
        rows = GLUE[name][f"{test}.tsv"][1]
        assert data.splits[test].labels is None
        assert data.splits[test].index == [r[0] for r in rows]  # the file's index/id column
    if name == "stsb":
        assert data.kind == "regression" and data.label_names is None
        assert train.labels.dtype == np.float32
    else:
        assert data.kind == "classification" and train.labels.dtype == np.int64


def test_glue_label_lists_metrics_and_submission_files_are_glues():
    assert TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    assert TASKS["qnli"].labels == TASKS["rte"].labels == ("entailment", "not_entailment")
    assert {TASKS[n].labels for n in ("cola", "sst2", "mrpc", "qqp", "wnli")} == {("0", "1")}
    assert TASKS["cola"].metrics == ("matthews_correlation",)
    assert TASKS["mrpc"].metrics == TASKS["qqp"].metrics == ("f1", "accuracy")
    assert TASKS["stsb"].metrics == ("pearson", "spearmanr")
    files = [f for s in TASKS.values() for f in s.submissions]
    assert files == [
        "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv",
        "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv",
    ]  # fmt: skip


def test_mnli_reads_both_dev_and_both_test_splits(tmp_path):
    data = read_task(task("mnli", glue_folder(tmp_path, "mnli")))
    assert data.dev_splits == ("dev_matched", "dev_mismatched")
    assert labels_of(data, "dev_matched") == ["neutral"]  # gold_label, not label1..label5
    assert labels_of(data, "dev_mismatched") == ["entailment", "contradiction"]
    assert data.splits["test_mismatched"].text_b == ["A day."]
    assert data.submissions == {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}


def test_cola_has_no_header_so_its_first_row_is_an_example(tmp_path):
    data = read_task(task("cola", glue_folder(tmp_path, "cola")))
    assert len(data.splits["train"]) == 3 and len(data.splits["dev"]) == 1
    assert data.splits["train"].text_a[2] == 'The "sailors" rode the breeze clear of the rocks.'


def test_test_files_are_optional_and_blank_lines_are_skipped(tmp_path):
    folder = glue_folder(tmp_path, "rte", skip=("test.tsv",))
    with (folder / "train.tsv").open("a") as f:
        f.write("\n\n2\tA third one.\tA third.\tentailment\n\n")
    data = read_task(task("rte", folder))
    assert set(data.splits) == {"train", "dev"}
    assert labels_of(data, "train") == ["not_entailment", "entailment", "entailment"]
    assert data.submissions == {"test": "RTE.tsv"}


# --- task=csv -----------------------------------------------------------------------------


def csv_task(folder: Path, kind: str = "classification", b: str | None = "b") -> TaskConfig:
    return task("csv", folder, kind=kind, text_a="a", text_b=b, label="y")


def write_rows(path: Path, rows: list[dict]) -> None:
    """rows as .jsonl, .csv (quoted where needed) or .tsv, by the file's suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    import csv

    with path.open("w", newline="") as f:
        delimiter = "\t" if path.suffix == ".tsv" else ","
        writer = csv.DictWriter(f, list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


TRAIN_ROWS = [
    {"a": "good, very good", "b": "fine", "y": "pos"},
    {"a": "bad", "b": "awful", "y": "neg"},
    {"a": "meh", "b": "so-so", "y": "pos"},
]


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_csv_task_reads_tsv_csv_and_jsonl_with_sorted_train_labels(tmp_path, suffix):
    write_rows(tmp_path / f"train{suffix}", TRAIN_ROWS)
    write_rows(tmp_path / f"dev{suffix}", [{"a": "ok", "b": "", "y": "neg"}])
    write_rows(tmp_path / f"test{suffix}", [{"id": "q7", "a": "hm", "b": "hmm"}])
    data = read_task(csv_task(tmp_path))
    assert data.label_names == ["neg", "pos"] and data.metrics == ("accuracy", "f1")
    assert data.splits["train"].text_a[0] == "good, very good"
    assert data.splits["train"].labels.tolist() == [1, 0, 1]
    assert data.splits["dev"].text_b == [""] and data.splits["dev"].labels.tolist() == [0]
    assert data.splits["test"].index == ["q7"] and data.splits["test"].labels is None
    assert data.submissions == {"test": "test_predictions.tsv"}


def test_csv_task_regression_single_text_and_many_labels(tmp_path):
    write_rows(tmp_path / "train.jsonl", [{"a": "x", "y": 1.5}, {"a": "y", "y": 3}])
    write_rows(tmp_path / "dev.jsonl", [{"a": "z", "y": "0.25"}])
    data = read_task(csv_task(tmp_path, "regression", b=None))
    assert data.kind == "regression" and data.metrics == ("pearson", "spearmanr")
    assert data.splits["train"].labels.tolist() == [1.5, 3.0] and "test" not in data.splits
    assert data.splits["dev"].text_b is None and data.splits["dev"].index == ["0"]
    write_rows(tmp_path / "train.jsonl", [{"a": "x", "y": c} for c in "abc"])
    write_rows(tmp_path / "dev.jsonl", [{"a": "x", "y": "c"}])
    assert read_task(csv_task(tmp_path, b=None)).metrics == ("accuracy",)


# --- bad input: one line each, naming the file and the fix --------------------------------


def error(config: TaskConfig) -> str:
    return one_line_error(lambda: read_task(config))


def test_a_missing_or_file_task_dir_is_one_line(tmp_path):
    message = error(task("rte", tmp_path / "nowhere"))
    assert "nowhere" in message and "does not exist" in message and "train.tsv" in message
    (tmp_path / "file").write_text("x")
    assert "not a folder" in error(task("rte", tmp_path / "file"))
    assert "unknown task=glue" in error(task("glue", tmp_path))


def test_a_missing_split_file_names_the_files_expected(tmp_path):
    message = error(task("mnli", glue_folder(tmp_path, "mnli", skip=("dev_mismatched.tsv",))))
    assert "dev_mismatched.tsv is missing" in message
    assert "train.tsv, dev_matched.tsv, dev_mismatched.tsv" in message and "download" in message


@pytest.mark.parametrize("text", ["", "\n\n", "sentence\tlabel\n"])
def test_an_empty_file_is_one_line(tmp_path, text):
    folder = glue_folder(tmp_path, "sst2")
    (folder / "dev.tsv").write_text(text)
    message = error(task("sst2", folder))
    assert "dev.tsv holds no examples" in message and "SST-2" in message


def test_a_file_without_its_header_row_says_which_columns_were_expected(tmp_path):
    folder = glue_folder(tmp_path, "sst2")
    write_tsv(folder / "train.tsv", None, [["a fine film", "1"]])
    message = error(task("sst2", folder))
    assert "train.tsv has no header row" in message and "sentence, label" in message
    write_tsv(folder / "train.tsv", ["sentence", "label"], [["ok", "1"]])
    write_tsv(folder / "test.tsv", None, [["0", "a fine film"]])
    assert "test.tsv has no header row" in error(task("sst2", folder))


def test_an_absent_column_is_named_with_the_columns_present(tmp_path):
    folder = glue_folder(tmp_path, "rte")
    write_tsv(folder / "dev.tsv", [*PAIR, "gold"], [["0", "x", "y", "entailment"]])
    message = error(task("rte", folder))
    assert "dev.tsv has no column 'label'" in message
    assert "index, sentence1, sentence2, gold" in message


def test_a_label_outside_the_task_names_it_the_line_and_the_labels(tmp_path):
    folder = glue_folder(tmp_path, "rte")
    write_tsv(
        folder / "dev.tsv",
        [*PAIR, "label"],
        [["0", "x", "y", "entailment"], ["1", "x", "y", "maybe"]],
    )
    message = error(task("rte", folder))
    assert "dev.tsv line 3" in message and "'maybe'" in message
    assert "entailment, not_entailment" in message


def test_a_score_that_is_not_a_number_names_the_line(tmp_path):
    folder = glue_folder(tmp_path, "stsb")
    write_tsv(folder / "dev.tsv", [*STSB_TEXT, "score"], [stsb_row("0", "x", "y", "n/a")])
    message = error(task("stsb", folder))
    assert "dev.tsv line 2" in message and "'n/a' is not a number" in message


def test_a_short_row_names_the_line(tmp_path):
    folder = glue_folder(tmp_path, "qqp")
    with (folder / "train.tsv").open("a") as f:
        f.write("363362\t\t\tHow do I\n")  # as QQP's few broken train rows are
    message = error(task("qqp", folder))
    assert "train.tsv line 4 has 4 columns, fewer than the 6" in message
    assert "fix or remove the line" in message


@pytest.mark.parametrize(
    ("name", "files", "says"),
    [
        ("rte", "mrpc", "looks like MRPC's files; use task=mrpc or point task.dir at RTE's folder"),
        ("sst2", "qnli", "looks like QNLI's files; use task=qnli"),
        ("sst2", "cola", "looks like CoLA's files; use task=cola"),
        ("cola", "sst2", "looks like SST-2's files; use task=sst2"),
        ("mnli", "wnli", "looks like RTE's or WNLI's files; use task=rte or task=wnli"),
    ],
)
def test_another_tasks_files_are_named(tmp_path, name, files, says):
    message = error(task(name, glue_folder(tmp_path, files)))
    assert "train.tsv" in message and says in message


def test_csv_task_settings_and_files_errors(tmp_path):
    assert "task.text_a and task.label" in error(task("csv", tmp_path, text_a="a"))
    assert "task.kind=ranking" in error(csv_task(tmp_path, kind="ranking"))
    assert "train.tsv or train.csv or train.jsonl" in error(csv_task(tmp_path))
    write_rows(tmp_path / "train.csv", TRAIN_ROWS)
    write_rows(tmp_path / "train.jsonl", TRAIN_ROWS)
    assert "train.csv and train.jsonl; keep one" in error(csv_task(tmp_path))
    (tmp_path / "train.jsonl").unlink()
    write_rows(tmp_path / "dev.csv", [{"a": "x", "b": "y", "y": "neutral"}])
    message = error(csv_task(tmp_path))
    assert "dev.csv line 2" in message and "'neutral'" in message and "neg, pos" in message
    write_rows(tmp_path / "dev.csv", [{"a": "x", "y": "pos"}])
    message = error(csv_task(tmp_path))
    assert "dev.csv has no column 'b' (its columns: a, y)" in message


def test_jsonl_errors_name_the_line(tmp_path):
    write_rows(tmp_path / "train.jsonl", TRAIN_ROWS)
    (tmp_path / "dev.jsonl").write_text('{"a": "x", "b": "y", "y": "pos"}\n{"a": "x", "y"\n')
    assert "dev.jsonl line 2 is not JSON" in error(csv_task(tmp_path))
    (tmp_path / "dev.jsonl").write_text('{"a": "x", "y": "pos"}\n')
    message = error(csv_task(tmp_path))
    assert "dev.jsonl line 1 has no value for 'b' (its keys: a, y)" in message


def test_without_a_folder_the_datasets_copy_offline_says_to_pass_task_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    # also when datasets was imported earlier, and whatever the real cache holds
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    message = error(task("rte", None))
    assert "cannot load RTE from the datasets library" in message
    assert "task.dir=FOLDER" in message and "GLUE download script" in message


# --- examples and batches -----------------------------------------------------------------

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog"]
TOKENIZER = Tokenizer("word", RESERVED + WORDS)
THE, CAT, SAT, ON, MAT, A, DOG = range(len(RESERVED), len(RESERVED) + len(WORDS))


def split_of(a: list[str], b: list[str] | None = None, labels=None) -> Split:
    labels = None if labels is None else np.asarray(labels)
    return Split("s", a, b, labels, [str(i) for i in range(len(a))])


def rows(encoded) -> list[tuple[list[int], list[int]]]:
    """Each example's tokens and segments, unpadded."""
    batch = next(eval_batches(encoded, len(encoded)))
    return [
        (t[:n].tolist(), s[:n].tolist())
        for t, s, n in zip(batch["tokens"], batch["segments"], batch["valid_lens"])
    ]


def test_encode_split_wraps_pairs_and_single_texts_as_bert_does():
    pairs = encode_split(split_of(["the cat sat", ""], ["a dog", "the unseen"]), TOKENIZER, 16)
    assert rows(pairs) == [
        ([CLS_ID, THE, CAT, SAT, SEP_ID, A, DOG, SEP_ID], [0, 0, 0, 0, 0, 1, 1, 1]),
        ([CLS_ID, SEP_ID, THE, 0, SEP_ID], [0, 0, 1, 1, 1]),  # an empty a stays; <unk> is 0
    ]
    single = encode_split(split_of(["on a mat", ""]), TOKENIZER, 16)
    assert rows(single) == [([CLS_ID, ON, A, MAT, SEP_ID], [0] * 5), ([CLS_ID, SEP_ID], [0, 0])]
    assert pairs.truncated == single.truncated == 0 and len(single) == 2


def test_truncation_cuts_the_longer_text_and_b_on_a_tie():
    a5, b2 = "the cat sat on a", "a dog"
    cut = encode_split(split_of([a5, "the cat sat"], [b2, "on a mat"]), TOKENIZER, 7)
    assert rows(cut)[0][0] == [CLS_ID, THE, CAT, SEP_ID, A, DOG, SEP_ID]  # a: 5 -> 2
    assert rows(cut)[1][0] == [CLS_ID, THE, CAT, SEP_ID, ON, A, SEP_ID]  # 3 + 3 -> 2 + 2
    assert cut.truncated == 2
    odd = encode_split(split_of(["the cat sat"], ["on a mat"]), TOKENIZER, 8)
    assert rows(odd)[0][0] == [CLS_ID, THE, CAT, SAT, SEP_ID, ON, A, SEP_ID]  # b cut first
    single = encode_split(split_of([a5]), TOKENIZER, 4)
    assert rows(single)[0][0] == [CLS_ID, THE, CAT, SEP_ID] and single.truncated == 1


def reference(a: str, b: str | None, max_len: int) -> tuple[list[int], list[int]]:
    """encode.py's own cut and wrap of one example: the behaviour to match."""
    split = [TOKENIZER.split(a)] + ([] if b is None else [TOKENIZER.split(b)])
    Encoder._fit(types.SimpleNamespace(max_len=max_len), split, True, "the example")
    _, ids, segments = _wrap(split)
    return ids, segments


texts = st.lists(st.sampled_from(WORDS + ["zebra"]), max_size=12).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(texts, texts), min_size=1, max_size=6),
    st.booleans(),
    st.integers(3, 20),
)
def test_encode_split_matches_encode_pys_longest_first_cut(examples, pair, max_len):
    a = [x for x, _ in examples]
    b = [y for _, y in examples] if pair else None
    encoded = encode_split(split_of(a, b), TOKENIZER, max_len)
    expected = [reference(x, b and b[i], max_len) for i, x in enumerate(a)]
    assert rows(encoded) == expected


def test_fit_lengths_keeps_what_fits():
    keep_a, keep_b = fit_lengths(np.array([2, 9, 9, 4]), np.array([3, 1, 9, 5]), 6)
    assert keep_a.tolist() == [2, 5, 3, 3] and keep_b.tolist() == [3, 1, 3, 3]
    odd = fit_lengths(np.array([4, 6]), np.array([5, 2]), 5)  # (4, 5): b, b, a popped
    assert [k.tolist() for k in odd] == [[3, 3], [2, 2]]


def stream_data(n: int = 10, max_len: int = 64) -> object:
    """n examples of lengths 3..n+2 whose labels are their numbers, so a batch shows which
    examples it holds."""
    a = [" ".join(["the"] * (i + 1)) for i in range(n)]
    return encode_split(split_of(a, labels=np.arange(n, dtype=np.int64)), TOKENIZER, max_len)


def test_a_batch_is_a_pure_function_of_its_step():
    stream = ClassificationStream(stream_data(), batch_size=3, seed=5)
    later = stream.batch(7)
    fresh = ClassificationStream(stream_data(), 3, seed=5)  # a resumed run
    shipped = pickle.loads(pickle.dumps(stream))  # a DataLoader worker's copy
    for key, value in later.items():
        assert torch.equal(fresh.batch(7)[key], value) and torch.equal(shipped.batch(7)[key], value)
    other = ClassificationStream(stream_data(), 3, seed=6).batch(7)
    assert not torch.equal(other["labels"], later["labels"])
    assert set(later) == {"tokens", "segments", "valid_lens", "labels"}
    assert later["tokens"].dtype == later["labels"].dtype == torch.int64


def test_each_epoch_is_a_permutation_dropping_the_partial_batch():
    stream = ClassificationStream(stream_data(10), batch_size=3, seed=0)
    assert stream.steps_per_epoch == 3
    epochs = []
    for epoch in range(3):
        seen = torch.cat([stream.batch(epoch * 3 + s)["labels"] for s in range(3)]).tolist()
        assert len(set(seen)) == 9 and set(seen) <= set(range(10))
        epochs.append(seen)
    assert epochs[0] != epochs[1]


def test_two_ranks_shares_concatenate_to_the_one_process_batch():
    stream = ClassificationStream(stream_data(10), batch_size=4, seed=1)
    for step in range(4):
        whole, first, second = (
            stream.batch(step),
            stream.batch(step, 0, 2),
            stream.batch(step, 1, 2),
        )
        for key in whole:
            assert torch.equal(torch.cat([first[key], second[key]]), whole[key])


@pytest.mark.parametrize("max_len", [64, 20])
def test_widths_are_multiples_of_16_up_to_max_len(max_len):
    data = stream_data(20, max_len)
    stream = ClassificationStream(data, batch_size=4, seed=0)
    for step in range(10):
        batch = stream.batch(step)
        width, longest = batch["tokens"].shape[1], int(batch["valid_lens"].max())
        assert longest <= width <= max_len and (width % 16 == 0 or width == max_len)
        assert width - longest < 16
        assert (batch["tokens"][:, longest:] == PAD_ID).all()


def test_too_small_a_train_split_and_the_loader(tmp_path):
    message = one_line_error(lambda: ClassificationStream(stream_data(3), 4, 0))
    assert "the train split has 3 examples, fewer than trainer.batch_size=4" in message
    stream = ClassificationStream(stream_data(6), 2, 0)
    loaded = list(batch_loader(stream, range(2, 4), 0, 1, 0, False))
    assert torch.equal(loaded[1]["labels"], stream.batch(3)["labels"])


def test_eval_batches_cover_the_split_in_order_without_labels_for_test():
    batches = list(eval_batches(stream_data(10), 4))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2]
    assert torch.cat([b["labels"] for b in batches]).tolist() == list(range(10))
    test = encode_split(split_of(["the cat", "a"]), TOKENIZER, 16)
    assert "labels" not in next(eval_batches(test, 8))
