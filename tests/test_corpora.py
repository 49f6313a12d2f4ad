"""Pretraining on a user's own corpus, through the CLI: `data=text` (plain text files) and
`data=hf` (a `datasets` dataset, here a local folder, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from bertpretrain import checkpoint
from bertpretrain.encode import Encoder

STEPS = ["model=tiny", "trainer.batch_size=32", "trainer.max_steps=2", "trainer.eval_batches=1"]


def raw_text(wikitext: Path, lines: int) -> str:
    """WikiText as people write it: spaced punctuation joined back ("word ." -> "word.")."""
    out = []
    for line in wikitext.read_text(encoding="utf-8").split("\n")[:lines]:
        for spaced, joined in ((" @-@ ", "-"), (" , ", ", "), (" . ", ". "), (" 's", "'s")):
            line = line.replace(spaced, joined)
        out.append(line.strip())
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory, wikitext_dir) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("text")
    train, held_out = folder / "my corpus.txt", folder / "held_out.txt"
    train.write_text(raw_text(wikitext_dir / "wiki.valid.tokens", 1500), encoding="utf-8")
    held_out.write_text(raw_text(wikitext_dir / "wiki.test.tokens", 300), encoding="utf-8")
    return train, held_out


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_text_files_pretrain_validate_and_encode(files, tmp_path, cli_env):
    train, held_out = files
    args = [f"data.files=['{train}']", f"data.valid_files=[{held_out}]", "hydra.run.dir=run"]
    result = run_cli(["train", "data=text", *STEPS, *args], tmp_path, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kept" in result.stdout and "paragraphs" in result.stdout
    done = summary(tmp_path / "run")
    assert done["steps"] == 2 and done["val_mlm_loss"] > 0
    state = checkpoint.load(checkpoint.resolve(tmp_path / "run"))
    assert state["config"]["data"]["source"] == "text"
    assert Encoder.load(tmp_path / "run").encode("The game began.").vectors.shape[1] == 128


def test_changing_a_text_file_rebuilds_instead_of_reusing_the_cache(files, tmp_path, cli_env):
    train, _ = files
    copy = tmp_path / "corpus.txt"
    copy.write_text(train.read_text(encoding="utf-8"), encoding="utf-8")
    env = cli_env | {"BERTPRETRAIN_DATA": str(tmp_path / "data")}
    args = ["data=text", f"data.files=[{copy}]", *STEPS, "trainer.max_steps=1"]
    assert run_cli(["train", *args, "hydra.run.dir=a"], tmp_path, env).returncode == 0
    again = run_cli(["train", *args, "hydra.run.dir=b"], tmp_path, env)
    assert "examples from cache" in again.stdout
    with copy.open("a", encoding="utf-8") as f:
        f.write("A new paragraph starts here. It has two sentences.\n")
    changed = run_cli(["train", *args, "hydra.run.dir=c"], tmp_path, env)
    assert changed.returncode == 0 and "examples from cache" not in changed.stdout
    assert len(list((tmp_path / "data" / "cache").glob("examples-*.npz"))) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=text"], "data.files=[a.txt,b.txt]"),
        (["data=text", "data.files=[missing.txt]"], "does not exist"),
        (["data=hf"], "data.name="),
        (["data=text", "data.files=[x.txt]", "data.dir=here"], "Key 'dir' not in 'TextConfig'"),
    ],
)
def test_corpus_mistakes_end_in_one_line(overrides, message, tmp_path, cli_env):
    result = run_cli(["train", *overrides, *STEPS], tmp_path, cli_env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def hf_folder(files, tmp_path) -> Path:
    """A folder `datasets` reads as a dataset with train and validation splits."""
    train, held_out = files
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text(train.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "validation.txt").write_text(held_out.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def test_hf_dataset_pretrains_offline_with_a_wordpiece_vocabulary(hf_folder, tmp_path, cli_env):
    pytest.importorskip("datasets", reason="install the hf extra: pip install -e '.[dev]'")
    env = cli_env | {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    args = ["data=hf", f"data.name={hf_folder}", "tokenizer=wordpiece", "tokenizer.vocab_size=2000"]
    result = run_cli(["train", *args, *STEPS, "hydra.run.dir=run"], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    done = summary(tmp_path / "run")
    assert done["steps"] == 2 and done["val_nsp_loss"] > 0
    state = checkpoint.load(checkpoint.resolve(tmp_path / "run"))
    assert state["tokenizer"]["kind"] == "wordpiece" and len(state["vocab"]) == 2000
    wrong = run_cli(["train", *args, "data.valid_split=valid", *STEPS], tmp_path, env)
    assert wrong.returncode == 2 and "validation" in wrong.stderr.strip().splitlines()[-1]
