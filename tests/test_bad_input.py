"""Bad input: every user mistake is one line on stderr and exit code 2, with no traceback,
and leaves every file as it was; crafted checkpoints never run code.

The table runs in-process through `cli.main`, the console script's own dispatcher (a
process per case would spend seconds on starting Python and importing torch); a few cases
also run as real processes, to show that the console script answers the same.
"""

from __future__ import annotations

import http.server
import os
import pickle
import re
import shlex
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import SHARED_WIKITEXT, TINY_ARGS, run_cli

from bertpretrain.errors import UserError
from bertpretrain.training import checkpoint

# ---------------------------------------------------------------------------------------
# checkpoints that run code when unpickled


class RunsCode:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": checkpoint.FORMAT, "step": 1, "model": RunsCode(marker)}, path)
    return path


def crafted_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "model": RunsCode(marker)}))
    return path


def test_crafted_files_really_run_code_when_loaded_unsafely(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    torch.load(crafted_checkpoint(tmp_path / "x.pt", a), weights_only=False)
    pickle.loads(crafted_pickle(tmp_path / "x.pkl", b).read_bytes())
    assert a.exists() and b.exists()  # so the refusals below are refusals of real exploits


def test_checkpoint_load_refuses_a_crafted_checkpoint_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    for path in (
        crafted_checkpoint(tmp_path / "x.pt", marker),
        crafted_pickle(tmp_path / "x.pkl", marker),
    ):
        with pytest.raises(UserError, match="checkpoint"):
            checkpoint.load(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# bad input: one line, exit 2, no traceback, no file lost or overwritten


@dataclass(frozen=True)
class Bad:
    id: str
    argv: tuple[str, ...]  # {name} is replaced by an input that MAKERS[name] builds
    needle: str  # a regex the error line must match
    # A folder the run may write its record and log into: it failed after it was accepted.
    # Elsewhere a refusal leaves at most the empty run dir that Hydra makes before the job.
    accepted_run: str | None = None


def _corpus(text: bytes) -> Callable:
    def make(case: Path, ctx: dict) -> Path:
        folder = case / "corpus"
        folder.mkdir()
        (folder / "wiki.train.tokens").write_bytes(text)
        return folder

    return make


def _linked_checkpoint(case: Path, ctx: dict) -> Path:
    dst = case / "ckpt" / Path(ctx["checkpoint"]).name
    dst.parent.mkdir()
    os.link(ctx["checkpoint"], dst)  # the same inode: a change shows up here too
    return dst


def _run_with_checkpoint(case: Path, ctx: dict) -> Path:
    run = case / "old-run"
    (run / checkpoint.SUBDIR).mkdir(parents=True)
    os.link(ctx["checkpoint"], run / checkpoint.SUBDIR / Path(ctx["checkpoint"]).name)
    return run


def _truncated(case: Path, ctx: dict) -> Path:
    data = Path(ctx["checkpoint"]).read_bytes()
    (case / "truncated.pt").write_bytes(data[: len(data) // 2])
    return case / "truncated.pt"


def _notes(case: Path, ctx: dict) -> Path:
    (case / "notes.pt").write_text("hello world\n")  # a text file passed as a checkpoint
    return case / "notes.pt"


def _empty_folder(case: Path, ctx: dict) -> Path:
    (case / "empty").mkdir()
    return case / "empty"


def _folder_corpus(case: Path, ctx: dict) -> Path:
    (case / "corpus" / "wiki.train.tokens").mkdir(parents=True)
    return case / "corpus"


def _unreadable_corpus(case: Path, ctx: dict) -> Path:
    # Root reads any file chmod forbids; reading /proc/self/mem at offset 0 fails with EIO.
    (case / "corpus").mkdir()
    (case / "corpus" / "wiki.train.tokens").symlink_to("/proc/self/mem")
    return case / "corpus"


def _regular_file(case: Path, ctx: dict) -> Path:
    (case / "afile").write_text("not a folder\n")
    return case / "afile"


def _checkpoints_is_a_file(case: Path, ctx: dict) -> Path:
    (case / "blocked").mkdir()
    (case / "blocked" / checkpoint.SUBDIR).write_text("not a folder\n")
    return case / "blocked"


def _download_root(case: Path, ctx: dict) -> Path:
    (case / "cache").mkdir()
    (case / "cache" / "keep.txt").write_text("someone else's file\n")
    return case / "cache"


def _finished_run(case: Path, ctx: dict) -> Path:
    """A copy of the finished tiny run: .hydra/, summary.json, its step 6 checkpoint."""
    shutil.copytree(ctx["run"], case / "finished", symlinks=True)
    return case / "finished"


def _user_folder(case: Path, ctx: dict) -> Path:
    (case / "mine").mkdir()
    (case / "mine" / "summary.json").write_text('{"my": "own notes"}\n')
    return case / "mine"


def _fifo_corpus(case: Path, ctx: dict) -> Path:
    (case / "corpus").mkdir()
    os.mkfifo(case / "corpus" / "wiki.train.tokens")
    return case / "corpus"


def _symlink_loop_corpus(case: Path, ctx: dict) -> Path:
    (case / "corpus").mkdir()
    (case / "corpus" / "wiki.train.tokens").symlink_to("wiki.train.tokens")
    return case / "corpus"


def _corpus_with_long_validation(case: Path, ctx: dict) -> Path:
    folder = case / "corpus"
    folder.mkdir()
    (folder / "wiki.train.tokens").symlink_to(SHARED_WIKITEXT / "wiki.valid.tokens")
    (folder / "wiki.valid.tokens").write_text(f"{WORDS} . {WORDS}\n" * 10)
    return folder


def _edited_checkpoint(edit: Callable[[dict], None]) -> Callable:
    def make(case: Path, ctx: dict) -> Path:
        state = checkpoint.load(Path(ctx["checkpoint"]))
        edit(state)
        torch.save(state, case / "edited.pt")
        return case / "edited.pt"

    return make


def _newline_in_vocab(state: dict) -> None:
    state["vocab"][7] = "two\nlines"


def _max_len_above_positions(state: dict) -> None:
    state["config"]["data"]["max_len"] = state["model_config"]["max_position"] + 88


def _pickled_module(case: Path, ctx: dict) -> Path:
    torch.save(torch.nn.Linear(2, 2), case / "module.pt")  # the whole module, pickled
    return case / "module.pt"


def _users_model_folder(case: Path, ctx: dict) -> Path:
    folder = case / "their-model"
    folder.mkdir()
    for name in ("config.json", "pytorch_model.bin", "README.md"):
        (folder / name).write_text(f"the user's own {name}\n")
    return folder


def _dangling(case: Path, ctx: dict) -> str:
    (case / "dangling").symlink_to(case / "gone")
    return "dangling"  # relative, as a Hub name would be


def _empty_file(case: Path, ctx: dict) -> Path:
    (case / "empty.pt").write_bytes(b"")
    return case / "empty.pt"


WORDS = " ".join(["word"] * 40)
MAKERS: dict[str, Callable[[Path, dict], Path | str]] = {
    "ckpt": _linked_checkpoint,
    "old_run": _run_with_checkpoint,
    "truncated": _truncated,
    "notes": _notes,
    "crafted": lambda case, ctx: crafted_checkpoint(case / "crafted.pt", case / "PWNED"),
    "crafted_pickle": lambda case, ctx: crafted_pickle(case / "crafted.pkl", case / "PWNED"),
    "empty_corpus": _corpus(b""),
    "corpus_without_pairs": _corpus(b"one sentence only\nanother line without a split\n"),
    "corpus_of_long_pairs": _corpus(f"{WORDS} . {WORDS}\n".encode() * 10),
    "latin1_corpus": _corpus("café au lait . le café est bon\n".encode("latin-1") * 10),
    "folder_corpus": _folder_corpus,
    "unreadable_corpus": _unreadable_corpus,
    "afile": _regular_file,
    "blocked_run": _checkpoints_is_a_file,
    "download_root": _download_root,
    "missing": lambda case, ctx: case / "missing",
    "empty_folder": _empty_folder,
    "url_junk": lambda case, ctx: f"{ctx['server']}/junk.zip",
    "finished_run": _finished_run,
    "user_folder": _user_folder,
    "fifo_corpus": _fifo_corpus,
    "symlink_loop_corpus": _symlink_loop_corpus,
    "long_validation": _corpus_with_long_validation,
    "newline_vocab": _edited_checkpoint(_newline_in_vocab),
    "long_max_len": _edited_checkpoint(_max_len_above_positions),
    "pickled_module": _pickled_module,
    "users_model": _users_model_folder,
    "dangling": _dangling,
    "empty_file": _empty_file,
    "long_name": lambda case, ctx: case / ("x" * 300),
    "loop": lambda case, ctx: (case / "loop").symlink_to("loop") or "loop",
    "over_path_max": lambda case, ctx: case.joinpath(*["d" * 200] * 25),
}


def tiny_args(**trainer: str) -> tuple[str, ...]:
    """The shared tiny run's overrides (TINY_ARGS), with other `trainer.KEY=VALUE`s: the
    cases that resume or copy that run must compose the config it was trained with."""
    keys = {f"trainer.{key}": value for key, value in trainer.items()}
    kept = [arg for arg in TINY_ARGS if arg.split("=", 1)[0] not in keys]
    return (*kept, *(f"{key}={value}" for key, value in keys.items()))


CORPUS = ("data.valid_split=null", "hydra.run.dir=run")
TRAIN_1 = (
    *tiny_args(max_steps="1", batch_size="8", eval_batches="1"),
    "hydra.run.dir={blocked_run}",
)
DOWNLOAD = ("data.dir=null", "data.root={download_root}", "hydra.run.dir=run")
ENCODE = ("encode", "a crane is flying")
INTO_FINISHED = "hydra.run.dir={finished_run}"
RESUME = (*tiny_args(max_steps="10"), "trainer.resume=true", INTO_FINISHED)
LONG_TEXT = " ".join(["word"] * 100)

BAD_INPUTS = [
    # the command line and the config
    Bad("unknown-command", ("trian",), r"unknown command 'trian'"),
    Bad("unknown-group-option", ("train", "optim=sgd"), r"optim/sgd"),
    Bad("unknown-key", ("train", "trainer.max_step=5"), r"max_step"),
    Bad("int-expected", ("train", "trainer.batch_size=abc"), r"trainer\.batch_size=abc"),
    Bad("dropout-out-of-range", ("train", "model.dropout=1.5"), r"model\.dropout=1\.5"),
    Bad("max-len-above-position-table", ("train", "data.max_len=600"), r"position table"),
    Bad("unknown-model", ("train", "model=huge"), r"huge"),
    Bad("unknown-model-key", ("train", "model.hidden=1"), r"hidden"),
    Bad("steps-not-a-number", ("train", "trainer.max_steps=ten"), r"max_steps"),
    Bad("zero-steps", ("train", "trainer.max_steps=0"), r"trainer\.max_steps"),
    Bad("negative-learning-rate", ("train", "optim.lr=-1"), r"optim\.lr"),
    Bad("heads-that-do-not-divide-the-width", ("train", "model.num_heads=3"), r"divisible"),
    Bad(
        "unknown-precision", ("train", "speed.precision=fp16"), r"speed.precision=.fp16. is unknown"
    ),
    Bad(
        "moved-setting",
        ("train", "trainer.precision=bf16"),
        r"trainer.precision is now speed.precision",
    ),
    Bad("negative-batch-size", ("train", "trainer.batch_size=-4"), r"trainer\.batch_size"),
    Bad("unknown-schedule", ("train", "optim.schedule=cosine"), r"schedule"),
    Bad("run-dir-parent-is-a-file", ("train", "hydra.run.dir={afile}/run"), r"run dir"),
    # the corpus
    Bad("missing-data-dir", ("train", "data.dir={missing}", *CORPUS), r"not a folder"),
    Bad(
        "data-dir-without-the-training-split",
        ("train", "data.dir={empty_folder}"),
        r"wiki\.train\.tokens.*data\.dir|data\.dir.*wiki\.train\.tokens",
    ),
    Bad("empty-corpus", ("train", "data.dir={empty_corpus}", *CORPUS), r"no paragraph"),
    Bad(
        "corpus-without-sentence-pairs",
        ("train", "data.dir={corpus_without_pairs}", *CORPUS),
        r"no paragraph with two sentences",
    ),
    Bad(
        "corpus-pairs-longer-than-max-len",
        ("train", "data.dir={corpus_of_long_pairs}", *CORPUS),
        r"no sentence pair .* fits data\.max_len",
    ),
    Bad("corpus-not-utf8", ("train", "data.dir={latin1_corpus}", *CORPUS), r"not UTF-8"),
    Bad("text-without-files", ("train", "data=text"), r"data\.files=\[a\.txt,b\.txt\]"),
    Bad(
        "text-missing-file",
        ("train", "data=text", "data.files=[{missing}.txt]", "hydra.run.dir=run"),
        r"missing\.txt does not exist",
    ),
    Bad(
        "text-key-of-another-source",
        ("train", "data=text", "data.files=[a.txt]", "data.dir=x"),
        r"data\.dir.*Key 'dir' is not in struct",
    ),
    Bad("hf-without-dataset", ("train", "data=hf"), r"data=hf needs a dataset: data\.name="),
    Bad("min-freq-zero", ("train", "data.min_freq=0"), r"data\.min_freq=0 is out of range"),
    Bad(
        "wordpiece-vocabulary-too-small",
        ("train", "tokenizer=wordpiece", "tokenizer.vocab_size=3"),
        r"tokenizer\.vocab_size=3 is out of range",
    ),
    pytest.param(
        Bad(
            "corpus-file-is-a-folder",
            ("train", "data.dir={folder_corpus}", *CORPUS),
            r"wiki\.train\.tokens is (a folder|a directory|not a (regular )?file)",
        ),
    ),
    pytest.param(
        Bad(
            "corpus-unreadable",
            ("train", "data.dir={unreadable_corpus}", *CORPUS),
            r"cannot read corpus file",
        ),
        marks=pytest.mark.skipif(sys.platform != "linux", reason="needs /proc/self/mem"),
    ),
    Bad("download-wrong-bytes", ("train", "data.urls=[{url_junk}]", *DOWNLOAD), r"sha1"),
    # checkpoints given to resume, and saving
    Bad("resume-missing-file", ("train", "trainer.resume={missing}.pt"), r"does not exist"),
    Bad(
        "resume-other-model-size",
        ("train", "trainer.resume={ckpt}", "model.num_layers=1", "hydra.run.dir=run"),
        r"model\.num_layers 2 -> 1",
    ),
    Bad(
        "resume-other-max-len",
        ("train", "trainer.resume=true", "data.max_len=32", "hydra.run.dir={old_run}"),
        r"data\.max_len",
    ),
    Bad(
        "resume-truncated-checkpoint",
        ("train", "trainer.resume={truncated}", "hydra.run.dir=run"),
        r"truncated\.pt is not a .*checkpoint",
    ),
    Bad(
        "resume-text-file",
        ("train", "trainer.resume={notes}", "hydra.run.dir=run"),
        r"notes\.pt is not a .*checkpoint",
    ),
    Bad(
        "resume-crafted-checkpoint",
        ("train", "trainer.resume={crafted}", "hydra.run.dir=run"),
        r"crafted\.pt is not a safe",
    ),
    Bad(
        "checkpoints-path-is-a-file",
        ("train", *TRAIN_1),
        r"could not write checkpoint",
        accepted_run="blocked",
    ),
    # encode
    Bad("encode-no-text", ("encode", "--checkpoint", "{ckpt}"), r"no text"),
    Bad("encode-empty-text", ("encode", "", "--checkpoint", "{ckpt}"), r"sentence 1 is empty"),
    Bad("encode-too-long", ("encode", LONG_TEXT, "--checkpoint", "{ckpt}"), r"limit is 64"),
    Bad("encode-three-sentences", ("encode", "a", "b", "c", "--checkpoint", "{ckpt}"), r"3 sent"),
    Bad(
        "encode-token-not-in-input",
        (*ENCODE, "--token", "dog", "--checkpoint", "{ckpt}"),
        r"'dog' is not in the input",
    ),
    Bad("encode-crafted-checkpoint", (*ENCODE, "--checkpoint", "{crafted}"), r"not a safe"),
    # a run dir holds one run: a new train never mixes into it, a resume never changes it
    Bad(
        "train-into-a-finished-run",
        ("train", *tiny_args(seed="5"), INTO_FINISHED),
        r"already holds a run.*trainer\.resume=true.*another hydra\.run\.dir",
    ),
    Bad(
        "train-into-a-folder-holding-a-summary",
        ("train", *tiny_args(max_steps="1"), "hydra.run.dir={user_folder}"),
        r"already holds a run \(summary\.json\)",
    ),
    Bad(
        "resume-with-another-learning-rate-and-batch",
        ("train", *RESUME, "optim.lr=0.5", "trainer.batch_size=32"),
        r"optim\.lr 0\.001 -> 0\.5, trainer\.batch_size 64 -> 32",
    ),
    Bad("resume-with-another-seed", ("train", *RESUME, "trainer.seed=5"), r"trainer\.seed 0 -> 5"),
    Bad(
        "resume-with-another-tokenizer",
        ("train", *RESUME, "tokenizer=wordpiece"),
        r"tokenizer\.name word -> wordpiece",
    ),
    Bad(
        "resume-below-the-checkpoint-step",
        ("train", *tiny_args(max_steps="4"), "trainer.resume=true", INTO_FINISHED),
        r"trainer\.max_steps=4 .*step 6",
    ),
    Bad(
        "resume-on-another-corpus",
        ("train", *RESUME, "data.train_split=test", "data.valid_split=valid"),
        r"another corpus",
    ),
    # corpora: only regular files, and an unusable validation split before training
    Bad("corpus-is-a-fifo", ("train", "data.dir={fifo_corpus}", *CORPUS), r"not a regular file"),
    Bad(
        "corpus-is-a-symlink-loop",
        ("train", "data.dir={symlink_loop_corpus}", *CORPUS),
        r"symlink loop",
    ),
    Bad(
        "text-file-is-a-fifo",
        ("train", "data=text", "data.files=[{fifo_corpus}/wiki.train.tokens]", "hydra.run.dir=run"),
        r"not a regular file",
    ),
    Bad(
        "validation-split-without-a-pair-that-fits",
        ("train", "data.dir={long_validation}", "data.valid_split=valid", "hydra.run.dir=run"),
        r"validation split .* no sentence pair .* fits data\.max_len",
    ),
    # the config: every key known, every interpolation resolved, every sweep job checked
    Bad("run-dir-the-os-refuses", ("train", "hydra.run.dir=/proc/nope/run"), r"run dir"),
    Bad(
        "run-dir-from-an-unset-variable",
        ("train", "hydra.run.dir=runs/${{oc.env:BERTPRETRAIN_NO_SUCH_VAR}}"),
        r"BERTPRETRAIN_NO_SUCH_VAR",
    ),
    Bad("interpolation-to-nowhere", ("train", "trainer.seed=${{nope.key}}"), r"nope"),
    Bad("added-misspelt-trainer-key", ("train", "+trainer.max_step=1"), r"trainer\.max_step"),
    Bad("added-unknown-model-key", ("train", "+model.foo=1"), r"model\.foo"),
    Bad("deleted-group", ("train", "~model"), r"model[^$]*$"),
    Bad(
        "unquoted-non-ascii-run-dir",
        ("train", "hydra.run.dir=runs/café"),
        r"quote",
    ),
    Bad(
        "sweep-with-a-bad-value",
        ("train", "-m", "trainer.batch_size=32,abc", "hydra.sweep.dir=sweep"),
        r"trainer\.batch_size=abc",
    ),
    Bad(
        "sweep-with-an-unknown-model",
        ("train", "-m", "model=huge,tiny", "hydra.sweep.dir=sweep"),
        r"model.*huge",
    ),
    Bad("print-config-with-an-unknown-key", ("train", "--cfg", "job", "model.hidden=1"), r"hidden"),
    Bad(
        "config-path-that-does-not-exist",
        ("train", "--config-path", "/nonexistent"),
        r"nonexistent",
    ),
    # checkpoints: validated on load, with messages free of terminal escapes
    Bad(
        "encode-a-pickled-module",
        (*ENCODE, "--checkpoint", "{pickled_module}"),
        r"module\.pt is not a safe bertpretrain checkpoint[^\x1b]*$",
    ),
    Bad(
        "export-a-vocabulary-with-a-newline",
        ("export", "{newline_vocab}", "out"),
        r"vocabulary .*line break",
    ),
    Bad(
        "encode-max-len-above-the-position-table",
        (*ENCODE, "--checkpoint", "{long_max_len}"),
        r"max_len 600 .*position table of 512",
    ),
    Bad(
        "export-force-over-a-users-folder",
        ("export", "{ckpt}", "{users_model}", "--force"),
        r"not an export of ours",
    ),
]


# Issue 26: inputs the OS, a library or the command line refuses, each one line
EDGES = [
    Bad(
        "encode-checkpoint-over-path-max", (*ENCODE, "--checkpoint", "{over_path_max}"), r"too long"
    ),
    Bad("encode-checkpoint-name-too-long", (*ENCODE, "--checkpoint", "{long_name}"), r"too long"),
    Bad("export-to-a-300-character-name", ("export", "{ckpt}", "{long_name}"), r"too long"),
    Bad("encode-dev-null", (*ENCODE, "--checkpoint", "/dev/null"), r"/dev/null .*not a regular"),
    Bad("encode-empty-checkpoint", (*ENCODE, "--checkpoint", "{empty_file}"), r"empty file"),
    Bad(
        "resume-dev-null",
        ("train", "trainer.resume=/dev/null", "hydra.run.dir=run"),
        r"/dev/null is not a checkpoint",
    ),
    Bad(
        "init-dev-null",
        ("train", *tiny_args(), "init=/dev/null", "hydra.run.dir=run"),
        r"/dev/null is not a checkpoint",
    ),
    Bad(
        "init-dangling-symlink",
        ("train", *tiny_args(), "init={dangling}", "hydra.run.dir=run"),
        r"dangling is a dangling symlink",
    ),
    Bad(
        "encode-file-dev-zero",
        ("encode", "--file", "/dev/zero", "--checkpoint", "{ckpt}"),
        r"--file /dev/zero holds more than 64 MiB",
    ),
    Bad(  # found by tests/test_fuzz.py: Path.resolve raised RuntimeError
        "resume-symlink-loop",
        ("train", "trainer.resume={loop}", "hydra.run.dir=run"),
        r"loop is a symlink loop",
    ),
    Bad("plan-ranks-beyond-the-batch", ("plan", "--ranks", "1" + "0" * 21), r"--ranks 1000"),
    Bad("plan-huge-vocabulary", ("plan", "--vocab-size", "9" * 20), r"--vocab-size 9+ is out"),
    Bad("plan-huge-batch", ("plan", "trainer.batch_size=99999999999999"), r"batch_size=9+ is out"),
    Bad("threads-beyond-the-machine", ("train", "speed.threads=100000"), r"speed\.threads"),
    Bad(
        "seed-beyond-64-bits",
        ("train", "trainer.seed=99999999999999999999999", "hydra.run.dir=run"),
        r"trainer\.seed=9+ is out of range",
    ),
    Bad("infinite-learning-rate", ("train", "optim.lr=inf"), r"optim\.lr=inf is out of range"),
    Bad("data-dir-to-nowhere", ("train", "data.dir=${{nope.key}}"), r"nope\.key"),
    Bad("data-dir-from-an-unset-variable", ("train", "data.dir=${{oc.env:NOPE_26}}"), r"NOPE_26"),
    Bad("cfg-nonsense", ("train", "--cfg", "nonsense"), r"--cfg.*invalid choice: 'nonsense'"),
    Bad("unknown-hydra-flag", ("train", "--help-nope"), r"unrecognized arguments: --help-nope"),
    Bad(
        "multirun-flag-after-an-override",
        ("train", "model=tiny", "-m", "optim.lr=1e-3,1e-2"),
        r"put Hydra's flags \(-m\) before the overrides",
    ),
    Bad("empty-sweep", ("train", "-m", "trainer.seed=range(0)"), r"launches no jobs"),
    Bad(
        "two-sweep-jobs-that-fail-in-one-line",
        ("train", "-m", "trainer.batch_size=ab,cd", "hydra.sweep.dir=sweep"),
        r"2 of 2 sweep jobs would fail",
    ),
    Bad(
        "empty-validation-file-entry",
        (
            "train",
            "data=text",
            "data.files=[{notes}]",
            "data.valid_files=['']",
            "hydra.run.dir=run",
        ),
        r"data\.valid_files has an empty entry",
    ),
    Bad(
        "chdir-with-a-relative-data-dir",
        ("train", "hydra.job.chdir=true", "data.dir=corpus", "hydra.run.dir=run"),
        r"hydra\.job\.chdir=true .* data\.dir=corpus",
    ),
    Bad(
        "resume-into-a-folder-with-a-summary-only",
        ("train", *tiny_args(), "trainer.resume=true", "hydra.run.dir={user_folder}"),
        r"no checkpoint to resume from",
    ),
    Bad("export-into-proc", ("export", "{ckpt}", "/proc/self/x"), r"x: No such file"),
]
BAD_INPUTS += EDGES


class _Inputs(dict):
    """Builds each {name} of a case's argv on first use, inside the case's folder."""

    def __init__(self, case: Path, ctx: dict):
        super().__init__()
        self.case, self.ctx = case, ctx

    def __missing__(self, name: str) -> str:
        self[name] = str(MAKERS[name](self.case, self.ctx))
        return self[name]


def snapshot(root: Path) -> dict[str, tuple[int, int] | str]:
    """Every file under root with its size and modification time, and every folder
    (symlinks not followed)."""
    found: dict[str, tuple[int, int] | str] = {}
    for folder, subfolders, names in os.walk(root):
        for name in subfolders:
            found[os.path.relpath(os.path.join(folder, name), root)] = "folder"
        for name in names:
            stat = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (
                stat.st_size,
                stat.st_mtime_ns,
            )
    return found


class _Handler(http.server.BaseHTTPRequestHandler):
    """/junk.zip: 200 with bytes that are not the archive; anything else: 404."""

    def do_GET(self):
        if self.path == "/junk.zip":
            body = b"this is not the WikiText-2 archive\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def context(tiny_run, server) -> dict:
    """What the makers build inputs from: the shared tiny run, its checkpoint, the server."""
    return {
        "checkpoint": checkpoint.list_checkpoints(tiny_run)[-1],
        "run": tiny_run,
        "server": server,
    }


@pytest.fixture
def case_argv(tmp_path, context, monkeypatch) -> Callable[[Bad], list[str]]:
    """A case's argv with its inputs built in tmp_path (the case's working dir)."""
    for name in ("no_proxy", "NO_PROXY"):  # the junk server is local
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    inputs = _Inputs(tmp_path, context)
    return lambda case: [arg.format_map(inputs) for arg in case.argv]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.id)
def test_a_bad_input_is_one_error_line_and_leaves_every_file_alone(
    case, case_argv, tmp_path, bertpretrain
):
    argv = case_argv(case)
    before = snapshot(tmp_path)
    line = bertpretrain(argv, tmp_path).error_line()
    assert re.search(case.needle, line), line
    after = snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before  # nothing changed or lost
    written = [
        name
        for name in after.keys() - before.keys()
        if after[name] != "folder" and Path(name).parts[0] != case.accepted_run
    ]
    assert written == []
    assert not (tmp_path / "PWNED").exists(), "a crafted checkpoint ran code"


# One of each kind (the dispatcher, Hydra's config, a checkpoint): as real processes, the
# console script must answer exactly as cli.main did in-process above.
AS_PROCESSES = ("unknown-command", "steps-not-a-number", "resume-text-file")


@pytest.mark.parametrize(
    "case", [c for c in BAD_INPUTS if getattr(c, "id", None) in AS_PROCESSES], ids=lambda c: c.id
)
def test_the_console_script_refuses_a_bad_input_exactly_as_cli_main_does(
    case, case_argv, tmp_path, bertpretrain, cli_env
):
    argv = case_argv(case)
    in_process = bertpretrain(argv, tmp_path)
    process = run_cli(argv, tmp_path, cli_env)
    assert "Traceback" not in process.stderr
    assert (process.returncode, process.stderr) == (in_process.code, in_process.err)
    assert re.search(case.needle, in_process.error_line())
