"""Shared fixtures: the real WikiText-2 splits from ../shared and a tiny trained run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest

from bertpretrain.config import TokenizerConfig
from bertpretrain.data.examples import Examples
from bertpretrain.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED_WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"

# Small enough for 2 CPU cores, large enough that the losses mean something.
TINY_ARGS = [
    "model=tiny",
    # speed.precision=auto is bf16 on some CPUs and fp32 on others: the tests compare numbers
    "speed.precision=fp32",
    f"data.dir={SHARED_WIKITEXT}",
    "data.train_split=valid",
    "data.valid_split=test",
    "trainer.batch_size=64",
    "trainer.max_steps=6",
    "trainer.log_every=2",
    "trainer.eval_batches=2",
]


def build_wikitext(
    train: Path,
    valid: Path | None,
    max_len: int = 64,
    min_freq: int = 5,
    seed: int = 0,
    cache_dir: Path | None = None,
    tokenizer: TokenizerConfig | None = None,
):
    """Examples of WikiText-style files with the word-level vocabulary (or `tokenizer`)."""
    from bertpretrain.data.corpus import wikitext
    from bertpretrain.data.pipeline import load_dataset

    cfg = tokenizer or TokenizerConfig(
        name="word", lowercase=True, min_freq=min_freq, vocab_size=None
    )
    return load_dataset(wikitext(train, valid), cfg, max_len, seed, cache_dir)


@dataclass
class All:
    """Every example of a split at once, as numpy arrays (what a batch of all would hold)."""

    tokens: np.ndarray
    segments: np.ndarray
    valid_lens: np.ndarray
    pred_positions: np.ndarray
    pred_labels: np.ndarray
    pred_weights: np.ndarray
    nsp_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.nsp_labels)


def every(examples: Examples) -> All:
    batch = examples.batch(np.arange(len(examples)))
    return All(**{f.name: batch[f.name].numpy() for f in fields(All)})


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    if not (SHARED_WIKITEXT / "wiki.valid.tokens").is_file():
        pytest.fail(f"the shared WikiText-2 splits are missing: expected them in {SHARED_WIKITEXT}")
    return SHARED_WIKITEXT


@pytest.fixture(scope="session")
def valid_batch(wikitext_dir) -> tuple[dict, int]:
    """A batch of 32 real examples (the valid split, max_len 64) and the vocabulary size,
    built once for the model tests that need real data rather than random ids."""
    from bertpretrain.data.batches import BatchStream

    data = build_wikitext(wikitext_dir / "wiki.valid.tokens", None, 64, 5, seed=0)
    return BatchStream(data.train, batch_size=32, seed=0).batch(0), len(data.vocab)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Environment for CLI subprocesses: a private data cache, no colour, no TTY tricks."""
    env = dict(os.environ)
    env["BERTPRETRAIN_DATA"] = str(tmp_path_factory.mktemp("data-cache"))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300):
    """`bertpretrain ARGS` as a real process (through the interpreter running the tests)."""
    return subprocess.run(
        [sys.executable, "-m", "bertpretrain", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Exited:
    """What a `bertpretrain` command left behind: its exit code and what it printed."""

    code: int | str
    out: str
    err: str

    def error_line(self) -> str:
        """The one line of a refused command: exit code 2, one `bertpretrain: error:` line
        on stderr (no traceback: one would have failed the test where it was raised)."""
        assert self.code == 2, (self.code, self.err[-3000:])
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err[-3000:]
        assert lines[0].startswith("bertpretrain: error: "), lines[0]
        return lines[0]


# On a small machine shared with other processes, OpenMP's spinning threads make a tiny-BERT
# step many times slower; one thread keeps the tiny runs fast and changes no test's result.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread (ONE_THREAD) for a test that trains in this process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bertpretrain(
    monkeypatch, capfd, cli_env, one_torch_thread
) -> Callable[[list[str], Path], Exited]:
    """`bertpretrain ARGV` from a folder, through the console script's own `cli.main` in
    this process: the seconds of a new interpreter and torch import saved per command.

    Each call starts as a fresh process would: no Hydra instance, the root logger as it
    was (Hydra's logging config replaces its handlers), the private data cache, no
    HYDRA_FULL_ERROR; the working dir, sys.argv and the environment come back afterwards.
    Any exception but SystemExit propagates: the traceback a user would have seen.
    """
    from hydra.core.global_hydra import GlobalHydra

    from bertpretrain import cli

    monkeypatch.setenv("BERTPRETRAIN_DATA", cli_env["BERTPRETRAIN_DATA"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["bertpretrain"])  # commands.train.main sets Hydra's
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(argv: list[str], cwd: Path) -> Exited:
        monkeypatch.chdir(cwd)
        GlobalHydra.instance().clear()
        capfd.readouterr()  # what earlier calls printed is theirs
        try:
            cli.main(list(argv))  # an explicit argv: main never re-executes the process
            code: int | str = 0
        except SystemExit as exited:
            code = 0 if exited.code is None else exited.code
        finally:
            GlobalHydra.instance().clear()
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
        out, err = capfd.readouterr()
        return Exited(code, out, err)

    return run


def trained_run(cwd: Path, args: list[str], env: dict[str, str]) -> Path:
    """`bertpretrain train ARGS` into cwd/run, which must succeed; returns the run dir."""
    result = run_cli(["train", *args, "hydra.run.dir=run"], cwd, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cli_env, wikitext_dir) -> Path:
    """A run dir with a checkpoint, trained once per test session through the CLI (default
    recipe), under ./outputs so that `encode` finds it as the newest run."""
    cwd = tmp_path_factory.mktemp("tiny-run")
    args = ["train", *TINY_ARGS, "hydra.run.dir=outputs/tiny"]
    result = run_cli(args, cwd, cli_env | ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "outputs" / "tiny"


@pytest.fixture(scope="session")
def collapsed_run(tmp_path_factory, cli_env, wikitext_dir) -> Path:
    """The tiny run at the reference's optimizer (optim=d2l), which collapses the encoder."""
    cwd = tmp_path_factory.mktemp("collapsed-run")
    return trained_run(cwd, [*TINY_ARGS, "optim=d2l"], cli_env | ONE_THREAD)


def one_line_error(call: Callable[[], object]) -> str:
    """The message of the UserError that `call` raises, checked to be one line."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message
