"""GLUE's nine tasks as its download script (gluebenchmark.com) lays out their files.

`TASKS` names, per task, the files' columns and header rows, the columns a task reads,
its labels as the files write them, GLUE's metrics and leaderboard file names, and the
`datasets` library's spelling of the same task. It is data only: data/glue.py reads by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bertpretrain.data.task_splits import CLASSIFICATION, REGRESSION


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One GLUE task's files as the download script writes them: `<split>.tsv` in a folder."""

    title: str  # GLUE's own spelling, for messages: "MNLI"
    columns: tuple[str, ...]  # of train/dev: their header row, or the positions' names
    header: bool  # whether train/dev start with a header row (all but CoLA's do)
    text_a: str  # the columns read, in train/dev and (but the label) in test
    text_b: str | None
    label: str
    test_columns: tuple[str, ...]  # test.tsv's header: an index/id column, the texts, no label
    labels: tuple[str, ...] | None  # as written in the files; None: regression (a score)
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    submissions: tuple[str, ...]  # the leaderboard's file name for each test split
    # The `datasets` copy: its text columns and its class names by int label.
    hub_a: str
    hub_b: str | None
    hub_labels: tuple[str, ...] | None

    @property
    def kind(self) -> str:
        return REGRESSION if self.labels is None else CLASSIFICATION

    @property
    def index_column(self) -> str:
        return self.test_columns[0]

    def needed(self) -> tuple[str, ...]:
        """The train/dev columns read."""
        return tuple(c for c in (self.text_a, self.text_b, self.label) if c is not None)


BINARY = ("0", "1")
NLI = ("entailment", "not_entailment")
PAIR = ("index", "sentence1", "sentence2")
MNLI_TEXT = (
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
)
STSB_TEXT = (
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
)

TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        title="CoLA",
        # No header: the source of the sentence, the label, the original author's mark
        # (`*` for unacceptable, often empty) and the sentence.
        columns=("source", "label", "original_mark", "sentence"),
        header=False,
        text_a="sentence",
        text_b=None,
        label="label",
        test_columns=("index", "sentence"),
        labels=BINARY,
        metrics=("matthews_correlation",),
        submissions=("CoLA.tsv",),
        hub_a="sentence",
        hub_b=None,
        hub_labels=BINARY,
    ),
    "sst2": TaskSpec(
        title="SST-2",
        columns=("sentence", "label"),
        header=True,
        text_a="sentence",
        text_b=None,
        label="label",
        test_columns=("index", "sentence"),
        labels=BINARY,
        metrics=("accuracy",),
        submissions=("SST-2.tsv",),
        hub_a="sentence",
        hub_b=None,
        hub_labels=BINARY,
    ),
    "mrpc": TaskSpec(
        title="MRPC",
        # The header of Microsoft's msr_paraphrase_*.txt, BOM and all (read as utf-8-sig).
        columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        header=True,
        text_a="#1 String",
        text_b="#2 String",
        label="Quality",
        test_columns=("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        labels=BINARY,
        metrics=("f1", "accuracy"),
        submissions=("MRPC.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=BINARY,
    ),
    "stsb": TaskSpec(
        title="STS-B",
        columns=(*STSB_TEXT, "score"),
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="score",
        test_columns=STSB_TEXT,
        labels=None,  # a similarity score from 0 to 5
        metrics=("pearson", "spearmanr"),
        submissions=("STS-B.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=None,
    ),
    "qqp": TaskSpec(
        title="QQP",
        columns=("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        header=True,
        text_a="question1",
        text_b="question2",
        label="is_duplicate",
        test_columns=("id", "question1", "question2"),
        labels=BINARY,
        metrics=("f1", "accuracy"),
        submissions=("QQP.tsv",),
        hub_a="question1",
        hub_b="question2",
        hub_labels=BINARY,
    ),
    "mnli": TaskSpec(
        title="MNLI",
        # train's; the dev files have label1..label5 (the annotators') before gold_label.
        columns=(*MNLI_TEXT, "label1", "gold_label"),
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="gold_label",
        test_columns=MNLI_TEXT,
        labels=("contradiction", "entailment", "neutral"),
        metrics=("accuracy",),
        dev_splits=("dev_matched", "dev_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        submissions=("MNLI-m.tsv", "MNLI-mm.tsv"),
        hub_a="premise",
        hub_b="hypothesis",
        hub_labels=("entailment", "neutral", "contradiction"),
    ),
    "qnli": TaskSpec(
        title="QNLI",
        columns=("index", "question", "sentence", "label"),
        header=True,
        text_a="question",
        text_b="sentence",
        label="label",
        test_columns=("index", "question", "sentence"),
        labels=NLI,
        metrics=("accuracy",),
        submissions=("QNLI.tsv",),
        hub_a="question",
        hub_b="sentence",
        hub_labels=NLI,
    ),
    "rte": TaskSpec(
        title="RTE",
        columns=(*PAIR, "label"),
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="label",
        test_columns=PAIR,
        labels=NLI,
        metrics=("accuracy",),
        submissions=("RTE.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=NLI,
    ),
    "wnli": TaskSpec(
        title="WNLI",
        columns=(*PAIR, "label"),  # 1: entailment, as in the files
        header=True,
        text_a="sentence1",
        text_b="sentence2",
        label="label",
        test_columns=PAIR,
        labels=BINARY,
        metrics=("accuracy",),
        submissions=("WNLI.tsv",),
        hub_a="sentence1",
        hub_b="sentence2",
        hub_labels=("0", "1"),  # not_entailment, entailment
    ),
}
