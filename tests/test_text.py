"""A user's own corpus: the sentence splitter and plain text files (data=text). Datasets
loaded by the Hugging Face `datasets` library (data=hf) are test_hf.py's."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from bertpretrain.data.sentences import paragraphs_from_lines, split_sentences
from bertpretrain.data.text import read_text_files

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


def test_prepare_logs_each_files_line_count_once(tmp_path, monkeypatch, caplog, wikitext_dir):
    """A wordpiece vocabulary reads the files once more: that pass stays out of the log."""
    from bertpretrain.config_compose import compose
    from bertpretrain.data.pipeline import prepare

    monkeypatch.setenv("BERTPRETRAIN_DATA", str(tmp_path))
    valid = wikitext_dir / "wiki.valid.tokens"
    overrides = ["data=text", f"data.files=[{valid}]", "tokenizer=wordpiece"]
    cfg = compose([*overrides, "tokenizer.vocab_size=500"])[0]
    with caplog.at_level(logging.INFO):
        prepare(cfg.data, cfg.tokenizer)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read ")]
    assert len(said) == 1 and str(valid) in said[0], said
