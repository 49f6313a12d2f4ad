"""Pretraining on a user's own corpus, through the CLI: `data=text` (plain text files) and
`data=hf` (a `datasets` dataset, here a local folder, offline)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import run_cli

from bertpretrain.config_compose import compose
from bertpretrain.data import pipeline
from bertpretrain.encode import Encoder
from bertpretrain.training import checkpoint

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


@pytest.mark.slow
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


def test_changing_a_text_file_rebuilds_instead_of_reusing_the_cache(files, tmp_path, caplog):
    train, _ = files
    copy = tmp_path / "corpus.txt"
    copy.write_text(train.read_text(encoding="utf-8"), encoding="utf-8")
    cfg, _ = compose(["data=text", f"data.files=[{copy}]", f"data.root={tmp_path / 'data'}"])
    caplog.set_level(logging.INFO)
    first = pipeline.load(cfg.data, cfg.tokenizer, 0)
    assert pipeline.load(cfg.data, cfg.tokenizer, 0).vocab == first.vocab
    assert "prepared corpus from cache" in caplog.text
    caplog.clear()
    with copy.open("a", encoding="utf-8") as f:
        f.write("A new paragraph starts here. It has two sentences.\n")
    changed = pipeline.load(cfg.data, cfg.tokenizer, 0)
    assert "prepared corpus from cache" not in caplog.text
    assert len(changed.train) != len(first.train) or changed.corpus_digest != first.corpus_digest
    assert len(list((tmp_path / "data" / "cache").glob("store-*"))) == 2


@pytest.fixture
def hf_folder(files, tmp_path) -> Path:
    """A folder `datasets` reads as a dataset with train and validation splits."""
    train, held_out = files
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text(train.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "validation.txt").write_text(held_out.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


@pytest.mark.slow
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
