"""A user's own corpus: the sentence splitter, plain text files (data=text) and datasets
loaded by the Hugging Face `datasets` library (data=hf), offline, from files in tmp_path."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from bertpretrain.data.text import (
    paragraphs_from_lines,
    read_hf,
    read_text_files,
    split_sentences,
)

# --- split_sentences -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("It is red. It is blue.", ["It is red.", "It is blue."]),
        ("Is it? Yes! It is.", ["Is it?", "Yes!", "It is."]),
        ("The end. 2001 came.", ["The end.", "2001 came."]),
        ("The last one has no space.Or this", ["The last one has no space.Or this"]),
        ("  Padded.   Both ends.  ", ["Padded.", "Both ends."]),
        ("Keep  inner   spaces. As is.", ["Keep  inner   spaces.", "As is."]),
    ],
)
def test_splits_after_terminators_before_a_capital_or_digit(text, sentences):
    assert split_sentences(text) == sentences


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith met Dr. Jones and Prof. Brown at St. Paul's.",
        "Apples vs. Oranges, e.g. Pears, i.e. Fruit, etc. Mostly.",
        "See Fig. 3 and No. 5 on Jan. 12 at Mt. Everest Inc. Offices.",
        "J. R. R. Tolkien and J.R.R. Martin live in the U.S. Today.",
        "It costs 3.5 dollars or 1,000.25 in v1.2.3 at example.com today.",
        "It ended. and then it went on.",
    ],
)
def test_does_not_split_after_abbreviations_initials_decimals_or_before_lower_case(text):
    assert split_sentences(text) == [text]


def test_lower_case_abbreviation_is_not_confused_with_a_listed_title_case_one():
    assert split_sentences("He said no. Then he left.") == ["He said no.", "Then he left."]


def test_the_pronoun_i_ends_a_sentence():
    assert split_sentences("So did I. Then we left.") == ["So did I.", "Then we left."]


def test_ellipsis_before_a_capital_splits():
    assert split_sentences("Wait... What now… Nothing.") == ["Wait...", "What now…", "Nothing."]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    text = 'He said "Stop." Then (it was late.) [Quiet.] \u201cGo!\u201d She went.'
    assert split_sentences(text) == [
        'He said "Stop."',
        "Then (it was late.)",
        "[Quiet.]",
        "\u201cGo!\u201d",
        "She went.",
    ]


def test_an_opening_quote_or_bracket_before_a_capital_starts_a_sentence():
    assert split_sentences('It ended. "Why?" he asked. (Nobody knew.)') == [
        "It ended.",
        '"Why?" he asked.',
        "(Nobody knew.)",
    ]


def test_unicode_capitals_start_sentences_and_caseless_scripts_never_split():
    assert split_sentences("Det är kallt. Ölet är slut. Été passé.") == [
        "Det är kallt.",
        "Ölet är slut.",
        "Été passé.",
    ]
    assert split_sentences("Это дом. Жил там кот.") == ["Это дом.", "Жил там кот."]
    assert split_sentences("这是一句。这是第二句。") == ["这是一句。这是第二句。"]


def test_spaced_wikitext_periods_split_like_raw_ones():
    line = (
        " The lobster is blue , H. gammarus . It is 0 @.@ 7 kg . "
        '<unk> live in the sea . " The end " , he said . 1990 was a year . '
    )
    assert split_sentences(line) == [
        "The lobster is blue , H. gammarus .",
        "It is 0 @.@ 7 kg .",
        "<unk> live in the sea .",
        '" The end " , he said .',
        "1990 was a year .",
    ]


def test_a_line_without_terminators_is_one_sentence_and_blank_is_none():
    assert split_sentences(" = = Description = = ") == ["= = Description = ="]
    assert split_sentences("   ") == []


# --- paragraphs_from_lines -----------------------------------------------------------------


def test_paragraphs_need_two_sentences_and_empty_lines_are_not_counted():
    lines = ["One. Two.", "", "  ", "Only one.", "\tA third. A fourth! A fifth?\r"]
    paragraphs, seen = paragraphs_from_lines(lines)
    assert paragraphs == [["One.", "Two."], ["A third.", "A fourth!", "A fifth?"]]
    assert seen == 3


def test_wikitext_paragraphs_are_about_as_many_as_the_reference_split(wikitext_dir: Path):
    lines = (wikitext_dir / "wiki.valid.tokens").read_text(encoding="utf-8").split("\n")
    paragraphs, seen = paragraphs_from_lines(lines)
    reference = [line for line in lines if len(line.strip().split(" . ")) >= 2]
    assert seen == sum(1 for line in lines if line.strip())
    assert abs(len(paragraphs) - len(reference)) <= 0.01 * len(reference)
    sentences = sum(len(p) for p in paragraphs)
    assert sentences > 4 * len(paragraphs)  # real splitting, not one cut per line
    assert all(s and s == s.strip() for p in paragraphs for s in p)


# --- read_text_files -----------------------------------------------------------------------


def list_text_files(paths):
    """read_text_files read to its end, as the prepared corpus reads it."""
    return list(read_text_files(paths))


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_reads_files_in_order_with_crlf_bom_and_tilde(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path))
    a = tmp_path / "a.txt"
    a.write_bytes(b"\xef\xbb\xbfFirst one. First two.\r\nNot kept.\r\n\r\n")
    b = write(tmp_path / "b.txt", "Second one. Second two.\nThird one. Third two.")
    with caplog.at_level(logging.INFO, logger="bertpretrain.data.text"):
        paragraphs = list_text_files(["~/a.txt", b])
    assert paragraphs == [
        ["First one.", "First two."],
        ["Second one.", "Second two."],
        ["Third one.", "Third two."],
    ]
    assert "read 2 lines" in caplog.text and "kept 1 paragraphs" in caplog.text
    assert "read 2 lines" in caplog.text and "kept 2 paragraphs" in caplog.text


def test_only_newline_splits_lines(tmp_path):
    path = write(tmp_path / "a.txt", "One. Two.\x0cThree.\u2028Four.\nFive. Six.\n")
    paragraphs = list_text_files([path])  # \x0c and \u2028 are spaces inside a line
    assert paragraphs == [["One.", "Two.", "Three.", "Four."], ["Five.", "Six."]]


def test_no_files_is_a_user_error_saying_how_to_set_them():
    message = one_line_error(lambda: list_text_files([]))
    assert "data.files=[a.txt,b.txt]" in message


def test_a_missing_file_is_a_user_error(tmp_path):
    good = write(tmp_path / "good.txt", "One. Two.\n")
    message = one_line_error(lambda: list_text_files([good, str(tmp_path / "nope.txt")]))
    assert "nope.txt does not exist" in message and "fix the path" in message


def test_a_folder_is_a_user_error_asking_for_its_files(tmp_path):
    message = one_line_error(lambda: list_text_files([str(tmp_path)]))
    assert "is a folder" in message and "data.files=[" in message


def test_a_file_that_is_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Fine. Line.\nCaf\u00e9. Bad.\n".encode("latin-1"))
    message = one_line_error(lambda: list_text_files([str(path)]))
    assert "not UTF-8" in message and "offset 15" in message and "convert it to UTF-8" in message


def test_the_byte_offset_counts_a_leading_bom(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfAb\xff")
    assert "offset 5" in one_line_error(lambda: list_text_files([str(path)]))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_user_error_about_permissions(tmp_path):
    path = tmp_path / "secret.txt"
    write(path, "One. Two.\n")
    path.chmod(0)
    message = one_line_error(lambda: list_text_files([str(path)]))
    assert "cannot read" in message and "permissions" in message


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux only")
def test_a_read_error_after_opening_is_a_user_error():
    message = one_line_error(lambda: list_text_files(["/proc/self/mem"]))  # EIO at offset 0
    assert "cannot read /proc/self/mem" in message


def test_no_paragraph_of_two_sentences_is_a_user_error_saying_what_a_paragraph_is(tmp_path):
    a = write(tmp_path / "a.txt", "just one sentence\n\nanother one.\n")
    b = write(tmp_path / "b.txt", "")
    message = one_line_error(lambda: list_text_files([a, b]))
    assert "one paragraph per line" in message and "at least two sentences" in message


# --- read_hf: a local folder through `datasets`, offline -----------------------------------


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
    folder = tmp_path / "corpus"
    folder.mkdir()
    write(folder / "train.txt", "Train one. Train two.\n\nOnly one here.\nMore. Still more.\n")
    write(folder / "validation.txt", "Valid one. Valid two.\n")
    return folder


def test_reads_a_split_of_a_local_folder(folder, offline, caplog):
    with caplog.at_level(logging.INFO, logger="bertpretrain.data.text"):
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
    message = one_line_error(lambda: read_hf(str(folder), None, "valid", "text", cache_dir=offline))
    assert "no split 'valid'" in message and "train, validation" in message


def test_an_unknown_column_lists_the_columns_and_the_setting(tmp_path, offline):
    folder = tmp_path / "json"
    folder.mkdir()
    write(
        folder / "train.jsonl", '{"body": "One. Two.", "n": 1}\n{"body": "Three. Four.", "n": 2}\n'
    )
    message = one_line_error(lambda: read_hf(str(folder), None, "train", "text", cache_dir=offline))
    assert "no column 'text'" in message and "body, n" in message
    assert "data.text_column=" in message
    message = one_line_error(lambda: read_hf(str(folder), None, "train", "n", cache_dir=offline))
    assert "not text" in message and "(body)" in message
    paragraphs = read_hf(str(folder), None, "train", "body", cache_dir=offline)
    assert paragraphs == [["One.", "Two."], ["Three.", "Four."]]


def test_null_rows_are_skipped(tmp_path, offline):
    folder = tmp_path / "nulls"
    folder.mkdir()
    write(folder / "train.jsonl", '{"text": null}\n{"text": "One. Two."}\n')
    assert read_hf(str(folder), None, "train", "text", cache_dir=offline) == [["One.", "Two."]]


def test_a_wrong_config_lists_the_configs(folder, offline):
    message = one_line_error(
        lambda: read_hf(str(folder), "wikitext-103-raw-v1", "train", "text", cache_dir=offline)
    )
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
    message = one_line_error(lambda: read_hf(str(folder), None, "train", "text", cache_dir=offline))
    assert "several configs" in message and "small, big" in message
    assert read_hf(str(folder), "big", "train", "text", cache_dir=offline) == [
        ["The big one.", "The big two."]
    ]


def test_a_hub_dataset_offline_and_not_cached_says_how_to_work_offline(offline):
    message = one_line_error(
        lambda: read_hf(
            "Salesforce/wikitext", "wikitext-103-raw-v1", "train", "text", cache_dir=offline
        )
    )
    assert "HF_DATASETS_OFFLINE" in message and "local folder" in message


def test_a_missing_local_folder_is_a_user_error(tmp_path, offline):
    for name in (str(tmp_path / "nope"), "./nope"):
        message = one_line_error(
            lambda n=name: read_hf(n, None, "train", "text", cache_dir=offline)
        )
        assert "not an existing folder" in message


def test_a_file_instead_of_a_folder_points_to_data_text(tmp_path, offline):
    path = write(tmp_path / "a.txt", "One. Two.\n")
    message = one_line_error(lambda: read_hf(path, None, "train", "text", cache_dir=offline))
    assert "is a file" in message and "data=text" in message


def test_an_empty_folder_asks_for_data_files(tmp_path, offline):
    (tmp_path / "empty").mkdir()
    message = one_line_error(
        lambda: read_hf(str(tmp_path / "empty"), None, "train", "text", cache_dir=offline)
    )
    assert "no data files" in message and "train.txt" in message


def test_a_data_file_datasets_cannot_parse_is_a_user_error(tmp_path, offline):
    folder = tmp_path / "bad"
    folder.mkdir()
    write(folder / "train.jsonl", '{"text": "One. Two."}\n{oops\n')
    message = one_line_error(lambda: read_hf(str(folder), None, "train", "text", cache_dir=offline))
    assert "cannot read its data files" in message and "JSON" in message


def test_no_paragraph_in_the_column_is_a_user_error(tmp_path, offline):
    folder = tmp_path / "short"
    folder.mkdir()
    write(folder / "train.txt", "one sentence only\n")
    message = one_line_error(lambda: read_hf(str(folder), None, "train", "text", cache_dir=offline))
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

    from bertpretrain import data
    from bertpretrain.config import compose
    from bertpretrain.data import text

    write(folder / "train.txt", "".join(f"Line {i} starts. Line {i} ends.\n" for i in range(500)))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", offline)
    monkeypatch.setattr(text, "_BATCH_ROWS", 20)
    read = []
    rows = text._column_rows
    monkeypatch.setattr(text, "_column_rows", lambda *a: (read.append(r) or r for r in rows(*a)))
    cfg, _ = compose(["data=hf", f"data.name={folder}", f"data.root={tmp_path / 'ours'}"])
    paragraphs = data.make_corpus(cfg.data).read_train()
    assert next(paragraphs) == ["Line 0 starts.", "Line 0 ends."]
    assert len(read) <= 20
    assert len(list(paragraphs)) == 499 and len(read) == 500


def test_a_cached_hf_corpus_is_not_read_again(folder, offline, monkeypatch, tmp_path, caplog):
    """The split's Arrow files define its text: a rerun hashes them instead of splitting
    every row into sentences again, and reads nothing when the examples are cached."""
    import datasets

    from bertpretrain import data
    from bertpretrain.config import compose

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", offline)
    cfg, _ = compose(
        ["data=hf", f"data.name={folder}", f"data.root={tmp_path / 'ours'}", "data.max_len=32"]
        + ["tokenizer.min_freq=1"]
    )
    caplog.set_level(logging.INFO)
    first = data.load(cfg.data, cfg.tokenizer, 0)
    assert "kept" in caplog.text
    caplog.clear()
    again = data.load(cfg.data, cfg.tokenizer, 0)
    assert "prepared corpus from cache" in caplog.text and "kept" not in caplog.text
    assert again.corpus_digest == first.corpus_digest and again.vocab == first.vocab
    (folder / "train.txt").write_text("A changed corpus. It has new words.\n" * 3)
    changed = data.load(cfg.data, cfg.tokenizer, 0)
    assert changed.corpus_digest != first.corpus_digest


def test_blank_lines_and_file_ends_end_documents_in_the_store(tmp_path):
    """google-research/bert's input format: blank lines between documents (BERT's pairing
    fills sequences from a document); every file ends one too. The paragraphs are the same
    as without document breaks."""
    from bertpretrain.data.store import encode_split
    from bertpretrain.data.tokenizer import Tokenizer
    from bertpretrain.data.vocab import RESERVED

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write(a, "One here. Two here.\nThree here. Four here.\n\n\nFive here. Six here.\n")
    write(b, "Seven here. Eight here.\n")
    tokenizer = Tokenizer("word", RESERVED + ["here."])
    split = encode_split(read_text_files([a, b], breaks=True), tokenizer)
    assert split.documents.tolist() == [0, 2, 3, 4]
    plain = encode_split(read_text_files([a, b]), tokenizer)
    assert plain.documents.tolist() == [0, 4]
    assert np.array_equal(split.paragraphs, plain.paragraphs)
