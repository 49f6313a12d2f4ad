"""The prepared corpus: tokenised once into memory-mapped arrays, reused, rebuilt when
damaged, never half-written, and read without loading it."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_WIKITEXT, run_cli

from bertpretrain.config import TokenizerConfig
from bertpretrain.data import parallel, split_writer, store
from bertpretrain.data.corpus import read_split, wikitext
from bertpretrain.data.pipeline import make_tokenizer, tokenizer_and_store
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.errors import UserError

WORD = TokenizerConfig(name="word", lowercase=True, min_freq=5, vocab_size=None)
VALID = SHARED_WIKITEXT / "wiki.valid.tokens"
TEST = SHARED_WIKITEXT / "wiki.test.tokens"


def prepared(cache: Path, train: Path = VALID, valid: Path | None = TEST):
    corpus = wikitext(train, valid)
    return corpus, *tokenizer_and_store(corpus, WORD, cache)


def test_the_store_holds_every_sentence_of_every_paragraph_in_order(tmp_path, wikitext_dir):
    corpus, tokenizer, prepared_store = prepared(tmp_path)
    for split, path in ((prepared_store.train, VALID), (prepared_store.valid, TEST)):
        paragraphs = list(read_split(path))
        assert isinstance(split.tokens, np.memmap) and split.tokens.dtype == np.uint16
        assert split.paragraph_sizes.tolist() == [len(p) for p in paragraphs]
        ids, lens = tokenizer.encode_sentences([s for p in paragraphs for s in p])
        assert split.sentence_lens.tolist() == lens.tolist()
        assert np.array_equal(split.tokens, ids)
    assert len(prepared_store.train) == 1673  # the reference's paragraphs of wiki.valid


@pytest.mark.parametrize("processes", [1, 2])
def test_learning_the_vocabulary_while_preparing_equals_learning_it_first(
    tmp_path, monkeypatch, processes
):
    """The one-pass build (provisional ids, counted, then mapped onto the vocabulary) gives
    the store and vocabulary of training the vocabulary and then tokenising, also when
    chunks are tokenised in worker processes and numbered there."""
    monkeypatch.setattr(split_writer, "CHUNK", 200)  # many chunks, each numbering its own words
    monkeypatch.setattr(parallel, "SERIAL_CHUNKS", 2)
    monkeypatch.setattr(parallel, "workers", lambda: processes)
    corpus = wikitext(VALID, TEST)
    one_pass = store.prepare_learning_words(corpus, 3, True, tmp_path / "one")
    tokenizer = make_tokenizer(corpus, TokenizerConfig("word", True, 3, None))
    two_pass = store.prepare(corpus, tokenizer, tmp_path / "two")
    assert one_pass.tokenizer == tokenizer
    assert one_pass.path.name == two_pass.path.name  # the same key: the same store
    for a, b in ((one_pass.train, two_pass.train), (one_pass.valid, two_pass.valid)):
        for array in store.ARRAYS:
            assert np.array_equal(getattr(a, array), getattr(b, array)), array
    meta = [json.loads((s.path / "meta.json").read_text()) for s in (one_pass, two_pass)]
    for m in meta:
        for split in ("train", "valid"):
            for info in m[split].values():
                del info["mtime_ns"]  # when each was written
    assert meta[0] == meta[1]  # digests included


def test_a_vocabulary_beyond_65536_ids_is_stored_as_uint32():
    assert split_writer.token_dtype(65536) == np.uint16
    assert split_writer.token_dtype(65537) == np.uint32
    vocab = [*Tokenizer("word", ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"]).vocab]
    vocab += [f"w{i}" for i in range(70_000)]
    split = store.encode_split([["w69999 w1", "w2"]], Tokenizer("word", vocab))
    assert split.tokens.dtype == np.uint32 and split.tokens.tolist() == [70004, 6, 7]


def test_a_second_run_opens_the_store_without_reading_the_corpus(tmp_path, caplog, wikitext_dir):
    *_, first = prepared(tmp_path)
    caplog.set_level("INFO")
    corpus = wikitext(VALID, TEST)
    corpus.read_train = corpus.read_valid = None  # reading it now would fail
    again = store.prepare(corpus, first.tokenizer, tmp_path)
    assert again.path == first.path and "prepared corpus from cache" in caplog.text
    assert np.array_equal(again.train.tokens, first.train.tokens)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no metadata"])
def test_a_damaged_store_is_rebuilt_with_a_warning(tmp_path, caplog, damage, wikitext_dir):
    *_, first = prepared(tmp_path)
    expected = np.array(first.train.tokens)
    tokens = first.path / "train.tokens"
    if damage == "truncated":
        os.truncate(tokens, tokens.stat().st_size - 2)
    elif damage == "flipped byte":
        data = bytearray(tokens.read_bytes())
        data[1000] ^= 0xFF
        tokens.write_bytes(bytes(data))
    else:
        (first.path / "meta.json").unlink()
    caplog.set_level("INFO")
    *_, rebuilt = prepared(tmp_path)
    assert "rebuilding the prepared corpus" in caplog.text
    assert np.array_equal(rebuilt.train.tokens, expected)


def test_a_failed_prepare_leaves_no_store_and_no_temp_files(tmp_path, monkeypatch, wikitext_dir):
    corpus = wikitext(VALID, None)
    tokenizer = make_tokenizer(corpus, WORD)

    def full(self, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(split_writer.ArrayWriter, "write", full)
    with pytest.raises(
        UserError, match=r"could not write the prepared corpus .*: the disk is full"
    ):
        store.prepare(corpus, tokenizer, tmp_path)
    assert not [p.name for p in tmp_path.iterdir() if "store" in p.name]


def test_a_corpus_that_changes_while_prepared_leaves_no_store(tmp_path, wikitext_dir):
    path = tmp_path / "wiki.train.tokens"
    path.write_bytes(VALID.read_bytes())
    corpus = wikitext(path, None)
    tokenizer = make_tokenizer(corpus, WORD)
    path.write_bytes(VALID.read_bytes().replace(b" the ", b" a ", 1))
    with pytest.raises(UserError, match="changed while this run read it"):
        store.prepare(corpus, tokenizer, tmp_path)
    assert not [p.name for p in tmp_path.iterdir() if "store" in p.name]


def big_corpus(folder: Path, copies: int) -> Path:
    """WikiText-2's validation split `copies` times: a corpus that grows on demand."""
    folder.mkdir()
    text = VALID.read_bytes()
    with open(folder / "wiki.train.tokens", "wb") as f:
        for _ in range(copies):
            f.write(text)
    return folder


def prepare_cli(folder: Path, cwd: Path, env: dict[str, str]):
    args = ["prepare", f"data.dir={folder}", "data.train_split=train", "data.valid_split=null"]
    return run_cli(args, cwd, env)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_prepare_streams_and_a_store_is_mapped_not_loaded(tmp_path, cli_env, wikitext_dir):
    """The corpus grows 24 times; neither preparing it nor opening its store grows with it."""
    peaks, opened = {}, {}
    for copies in (1, 24):
        folder = big_corpus(tmp_path / f"x{copies}", copies)
        result = prepare_cli(folder, tmp_path, cli_env)
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[copies] = int(re.search(r"peak memory (\d+) MiB", result.stdout)[1])
        path = re.search(r"prepared corpus: (\S+)", result.stdout)[1]
        measure = (
            "import sys, json\n"
            "from pathlib import Path\n"
            "from bertpretrain.data import store\n"
            "from bertpretrain.data.tokenizer import Tokenizer\n"
            "s = store.open_store(Path(sys.argv[1]), None)\n"
            "n = int(s.train.tokens[::4096].sum()) + len(s.train.sentences)\n"
            "rss = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS'))\n"
            "print(json.dumps({'rss_kib': rss, 'tokens': len(s.train.tokens)}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", measure, path], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        opened[copies] = json.loads(out.stdout)
    assert opened[24]["tokens"] == 24 * opened[1]["tokens"]
    growth = (opened[24]["rss_kib"] - opened[1]["rss_kib"]) / 1024
    assert growth < 20, f"opening a 24x larger store took {growth:.0f} MiB more"
    # 24 copies are about 5M tokens: held as Python strings they would take ~400 MiB more
    assert peaks[24] - peaks[1] < 60, peaks


@pytest.mark.slow
def test_prepare_takes_trains_overrides_and_a_second_call_finds_the_store(tmp_path, cli_env):
    args = ["prepare", f"data.dir={SHARED_WIKITEXT}", "data.train_split=valid"]
    args += ["data.valid_split=test"]
    first = run_cli(args, tmp_path, cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    line = re.search(
        r"prepared corpus: (\S+) \((\d+) training tokens, (\d+) validation", first.stdout
    )
    assert line, first.stdout
    again = run_cli(args, tmp_path, cli_env)
    assert again.returncode == 0 and f"prepared corpus: {line[1]} " in again.stdout
    assert "from cache" in again.stdout

    bad = run_cli(["prepare", "data.max_len=abc"], tmp_path, cli_env)
    assert bad.returncode == 2 and bad.stderr.startswith("bertpretrain: error: ")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 semantics")
def test_kill_9_during_prepare_leaves_nothing_a_later_run_trusts(tmp_path, cli_env, wikitext_dir):
    folder = big_corpus(tmp_path / "corpus", 40)
    args = [sys.executable, "-m", "bertpretrain", "prepare", f"data.dir={folder}"]
    args += ["data.train_split=train", "data.valid_split=null"]
    cache = Path(cli_env["BERTPRETRAIN_DATA"]) / "cache"
    before = set(cache.glob("store-*"))
    proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.endswith(".tmp") and "store" in p.name for p in cache.glob(".*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no store write seen"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert set(cache.glob("store-*")) == before, "a half-built store was published"
    result = prepare_cli(folder, tmp_path, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")], "orphans left behind"


def test_a_corpus_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    from bertpretrain.data import corpus

    path, memo = tmp_path / "wiki.train.tokens", tmp_path / "cache" / "digests.json"
    path.write_bytes(VALID.read_bytes())
    first = corpus.file_digest(path, memo=memo)
    assert first == corpus.file_digest(path)  # the same digest as hashing
    hashed = []
    real = corpus._hash_files
    monkeypatch.setattr(corpus, "_hash_files", lambda paths: hashed.append(paths) or real(paths))
    assert corpus.file_digest(path, memo=memo) == first and not hashed  # remembered
    path.write_bytes(VALID.read_bytes().replace(b" the ", b" a ", 1))
    assert corpus.file_digest(path, memo=memo) != first and hashed  # changed: hashed again
