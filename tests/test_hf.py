"""data=hf: datasets loaded by the Hugging Face `datasets` library, offline, from folders in
tmp_path, and what it raises that a user can fix, as one line. These run the real library:
each error test fails on code that does not recognise its case."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from conftest import one_line_error

from bertpretrain.data.hf import read_hf


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def dataset(folder: Path, files: dict[str, str]) -> str:
    """A local dataset: `folder` holding `files` (name: text)."""
    folder.mkdir(parents=True)
    for name, text in files.items():
        write(folder / name, text)
    return str(folder)


def error_reading(
    name: str, cache_dir: str, config: str | None = None, split: str = "train"
) -> str:
    """The one-line message of reading `split` of column `text` of the dataset `name`."""
    return one_line_error(lambda: read_hf(name, config, split, "text", cache_dir=cache_dir))


@pytest.fixture
def offline(monkeypatch, tmp_path) -> str:
    """No network for datasets (also when another test imported it earlier); its cache in
    tmp_path. Returns the cache dir to pass to read_hf."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return str(tmp_path / "hf-cache")


@pytest.fixture
def folder(tmp_path) -> Path:
    """A local dataset: splits named by file, one paragraph per line."""
    train = "Train one. Train two.\n\nOnly one here.\nMore. Still more.\n"
    return Path(
        dataset(
            tmp_path / "corpus", {"train.txt": train, "validation.txt": "Valid one. Valid two.\n"}
        )
    )


def test_reads_a_split_of_a_local_folder(folder, offline, caplog):
    with caplog.at_level(logging.INFO, logger="bertpretrain.data.hf"):
        paragraphs = read_hf(str(folder), None, "train", "text", cache_dir=offline)
    assert paragraphs == [["Train one.", "Train two."], ["More.", "Still more."]]
    assert "read 3 lines" in caplog.text and "kept 2 paragraphs" in caplog.text
    valid = read_hf(str(folder), None, "validation", "text", cache_dir=offline)
    assert valid == [["Valid one.", "Valid two."]]


def test_reads_a_split_expression(folder, offline):
    paragraphs = read_hf(str(folder), "", "train[:1]+validation", "text", cache_dir=offline)
    assert paragraphs == [["Train one.", "Train two."], ["Valid one.", "Valid two."]]


def test_leaves_progress_bar_switches_as_they_were(folder, offline):
    import datasets
    import huggingface_hub

    datasets.disable_progress_bars()
    try:
        read_hf(str(folder), None, "train", "text", cache_dir=offline)
        assert datasets.are_progress_bars_disabled()
    finally:
        datasets.enable_progress_bars()
    read_hf(str(folder), None, "validation", "text", cache_dir=offline)
    assert not datasets.are_progress_bars_disabled()
    assert not huggingface_hub.utils.are_progress_bars_disabled()


def test_an_unknown_split_lists_the_splits_there_are(folder, offline):
    message = error_reading(str(folder), offline, None, "valid")
    assert "no split 'valid'" in message and "train, validation" in message


def test_an_unknown_column_lists_the_columns_and_the_setting(tmp_path, offline):
    rows = '{"body": "One. Two.", "n": 1}\n{"body": "Three. Four.", "n": 2}\n'
    folder = dataset(tmp_path / "json", {"train.jsonl": rows})
    message = error_reading(str(folder), offline)
    assert "no column 'text'" in message and "body, n" in message
    assert "data.text_column=" in message
    message = one_line_error(lambda: read_hf(str(folder), None, "train", "n", cache_dir=offline))
    assert "not text" in message and "(body)" in message
    paragraphs = read_hf(str(folder), None, "train", "body", cache_dir=offline)
    assert paragraphs == [["One.", "Two."], ["Three.", "Four."]]


def test_null_rows_are_skipped(tmp_path, offline):
    folder = dataset(tmp_path / "nulls", {"train.jsonl": '{"text": null}\n{"text": "One. Two."}\n'})
    assert read_hf(str(folder), None, "train", "text", cache_dir=offline) == [["One.", "Two."]]


def test_a_wrong_config_lists_the_configs(folder, offline):
    message = error_reading(str(folder), offline, "wikitext-103-raw-v1")
    assert (
        "no config 'wikitext-103-raw-v1'" in message and "data.config to one of default" in message
    )


def test_a_missing_config_of_a_dataset_with_several_lists_them(tmp_path, offline):
    folder = tmp_path / "configs"
    for config in ("small", "big"):
        (folder / config).mkdir(parents=True)
        write(folder / config / "train.txt", f"The {config} one. The {config} two.\n")
    write(
        folder / "README.md",
        "---\nconfigs:\n"
        "- config_name: small\n  data_files:\n  - split: train\n    path: small/train.txt\n"
        "- config_name: big\n  data_files:\n  - split: train\n    path: big/train.txt\n---\n",
    )
    message = error_reading(str(folder), offline)
    assert "several configs" in message and "small, big" in message
    assert read_hf(str(folder), "big", "train", "text", cache_dir=offline) == [
        ["The big one.", "The big two."]
    ]


@pytest.mark.parametrize(
    "name, config", [("Salesforce/wikitext", "wikitext-103-raw-v1"), ("someone/nothing", None)]
)
def test_a_hub_dataset_offline_and_not_cached_says_how_to_work_offline(offline, name, config):
    message = error_reading(name, offline, config)
    assert "HF_DATASETS_OFFLINE" in message and "local folder" in message


def test_a_config_error_is_told_by_the_configs_not_by_the_message(folder, offline, monkeypatch):
    """datasets raises a plain ValueError for an unknown config: whatever its wording, the
    configs the dataset has say what is wrong."""
    from datasets import builder

    real = builder.DatasetBuilder._create_builder_config

    def reworded(self, config_name=None, *args, **kwargs):
        try:
            return real(self, config_name, *args, **kwargs)
        except ValueError:
            raise ValueError("some new wording") from None

    monkeypatch.setattr(builder.DatasetBuilder, "_create_builder_config", reworded)
    message = error_reading(str(folder), offline, "nope")
    assert "no config 'nope'" in message and "one of default" in message


def test_another_value_error_of_datasets_is_not_taken_for_a_config_error(
    folder, offline, monkeypatch
):
    import datasets

    def fails(*args, **kwargs):
        raise ValueError("something else went wrong")

    monkeypatch.setattr(datasets, "load_dataset_builder", fails)
    with pytest.raises(ValueError, match="something else"):
        read_hf(str(folder), None, "train", "text", cache_dir=offline)


def test_a_split_not_known_before_preparing_is_told_once_prepared(folder, offline, monkeypatch):
    """A dataset whose metadata lists no splits (nothing to check before the download) has
    its split checked against those it turned out to have."""
    from bertpretrain.data import hf

    monkeypatch.setattr(hf, "_known_splits", lambda builder: [])
    message = error_reading(str(folder), offline, None, "valid")
    assert "no split 'valid'" in message and "train, validation" in message


def test_a_name_that_is_neither_a_folder_nor_a_hub_dataset_is_a_user_error(
    tmp_path, offline, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    message = error_reading("a/b/c", offline)
    assert "data.name=a/b/c" in message and "set data.name to a Hub dataset" in message


def test_a_folder_with_a_loading_script_is_a_user_error(tmp_path, offline):
    files = {"scripted.py": "import datasets\n", "train.txt": "One. Two.\n"}
    message = error_reading(dataset(tmp_path / "scripted", files), offline)
    assert "loading script" in message and "Salesforce/wikitext" in message


def test_a_hub_dataset_with_a_loading_script_is_told_by_the_script_in_the_cache(
    tmp_path, offline, monkeypatch
):
    """Online, datasets fetches the script to find it there, then raises a plain
    RuntimeError: the script in the Hub cache says what it was, whatever the wording."""
    import datasets
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "datasets--someone--scripted"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    write(repo / "snapshots" / "abc123" / "scripted.py", "import datasets\n")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def found_a_script(*args, **kwargs):
        raise RuntimeError("some new wording")

    monkeypatch.setattr(datasets, "load_dataset_builder", found_a_script)
    message = one_line_error(lambda: read_hf("someone/scripted", None, "train", "text"))
    assert "loading script" in message
    with pytest.raises(RuntimeError, match="some new wording"):  # no script: not ours to say
        read_hf("someone/other", None, "train", "text")


def test_a_missing_local_folder_is_a_user_error(tmp_path, offline):
    for name in (str(tmp_path / "nope"), "./nope"):
        message = one_line_error(
            lambda n=name: read_hf(n, None, "train", "text", cache_dir=offline)
        )
        assert "not an existing folder" in message


def test_a_file_instead_of_a_folder_points_to_data_text(tmp_path, offline):
    path = write(tmp_path / "a.txt", "One. Two.\n")
    message = error_reading(path, offline)
    assert "is a file" in message and "data=text" in message


def test_an_empty_folder_asks_for_data_files(tmp_path, offline):
    (tmp_path / "empty").mkdir()
    message = error_reading(str(tmp_path / "empty"), offline)
    assert "no data files" in message and "train.txt" in message


def test_a_data_file_datasets_cannot_parse_is_a_user_error(tmp_path, offline):
    files = {"train.jsonl": '{"text": "One. Two."}\n{oops\n'}
    message = error_reading(dataset(tmp_path / "bad", files), offline)
    assert "cannot read its data files" in message and "JSON" in message


def test_no_paragraph_in_the_column_is_a_user_error(tmp_path, offline):
    message = error_reading(
        dataset(tmp_path / "short", {"train.txt": "one sentence only\n"}), offline
    )
    assert "two sentences" in message and "data.text_column" in message


def test_a_dataset_the_hub_does_not_have_is_a_user_error(offline, monkeypatch):
    # Needs the network to happen for real; the exception is datasets' own, as it raises it.
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def not_found(path, *args, **kwargs):
        raise DatasetNotFoundError(
            f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed."
        )

    monkeypatch.setattr(datasets, "load_dataset_builder", not_found)
    message = one_line_error(lambda: read_hf("someone/nothing", None, "train", "text"))
    assert "doesn't exist on the Hub" in message and "hf auth login" in message


def test_without_the_datasets_library_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    message = one_line_error(lambda: read_hf("Salesforce/wikitext", None, "train", "text"))
    assert "pip install 'bertpretrain[hf]'" in message


def test_a_hf_corpus_is_read_a_batch_of_rows_at_a_time(folder, offline, monkeypatch, tmp_path):
    """data=hf streams (WikiText-103 or Wikipedia need not fit in memory): the first
    paragraph comes after one batch of rows is read, not the whole split."""
    import datasets

    from bertpretrain.config_compose import compose
    from bertpretrain.data import hf, pipeline

    write(folder / "train.txt", "".join(f"Line {i} starts. Line {i} ends.\n" for i in range(500)))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", offline)
    monkeypatch.setattr(hf, "_BATCH_ROWS", 20)
    read = []
    rows = hf._column_rows
    monkeypatch.setattr(hf, "_column_rows", lambda *a: (read.append(r) or r for r in rows(*a)))
    cfg, _ = compose(["data=hf", f"data.name={folder}", f"data.root={tmp_path / 'ours'}"])
    paragraphs = pipeline.make_corpus(cfg.data).read_train()
    assert next(paragraphs) == ["Line 0 starts.", "Line 0 ends."]
    assert len(read) <= 20
    assert len(list(paragraphs)) == 499 and len(read) == 500


def test_a_cached_hf_corpus_is_not_read_again(folder, offline, monkeypatch, tmp_path, caplog):
    """The split's Arrow files define its text: a rerun hashes them instead of splitting
    every row into sentences again, and reads nothing when the examples are cached."""
    import datasets

    from bertpretrain.config_compose import compose
    from bertpretrain.data import pipeline

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", offline)
    cfg, _ = compose(
        ["data=hf", f"data.name={folder}", f"data.root={tmp_path / 'ours'}", "data.max_len=32"]
        + ["tokenizer.min_freq=1"]
    )
    caplog.set_level(logging.INFO)
    first = pipeline.load(cfg.data, cfg.tokenizer, 0)
    assert "kept" in caplog.text
    caplog.clear()
    again = pipeline.load(cfg.data, cfg.tokenizer, 0)
    assert "prepared corpus from cache" in caplog.text and "kept" not in caplog.text
    assert again.corpus_digest == first.corpus_digest and again.vocab == first.vocab
    (folder / "train.txt").write_text("A changed corpus. It has new words.\n" * 3)
    changed = pipeline.load(cfg.data, cfg.tokenizer, 0)
    assert changed.corpus_digest != first.corpus_digest
