"""Data pipeline: reading, vocabulary, NSP pairs, masked-LM targets, the cache and batches.

Most tests use the real WikiText-2 valid split (test split as validation) at max_len 64,
built once per module; the rules at the edges use small synthetic corpora.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import All, build_wikitext, every

from bertpretrain.config import TokenizerConfig
from bertpretrain.data import pipeline as pipeline_module
from bertpretrain.data import store as store_module
from bertpretrain.data.batches import BatchStream, batch_loader, eval_batches
from bertpretrain.data.corpus import read_split, split_paragraphs, wikitext
from bertpretrain.data.examples import Examples, max_predictions
from bertpretrain.data.pairing import d2l_pairs
from bertpretrain.data.pipeline import Dataset, tokenizer_key
from bertpretrain.data.store import encode_split, store_key
from bertpretrain.data.tokenizer import Tokenizer, train_tokenizer
from bertpretrain.data.vocab import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    RESERVED,
    SEP_ID,
    UNK_ID,
    build_vocab,
    token_index,
)
from bertpretrain.errors import UserError

MAX_LEN = 64
MIN_FREQ = 5
SEED = 0


# --- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_path(wikitext_dir: Path) -> Path:
    return wikitext_dir / "wiki.valid.tokens"


@pytest.fixture(scope="module")
def test_split_path(wikitext_dir: Path) -> Path:
    return wikitext_dir / "wiki.test.tokens"


@pytest.fixture(scope="module")
def dataset(valid_path: Path, test_split_path: Path) -> Dataset:
    """The real valid split as training data, the test split as validation, built once."""
    return build_wikitext(valid_path, test_split_path, MAX_LEN, MIN_FREQ, SEED)


def build(paragraphs, tokenizer: Tokenizer, max_len: int, rng: np.random.Generator) -> All:
    """The examples of in-memory paragraphs, as `load_dataset` makes a split's."""
    split = encode_split(paragraphs, tokenizer)
    pairs = d2l_pairs(split, max_len, rng)
    seed = int(rng.integers(2**62))
    return every(Examples(split, pairs, max_len, len(tokenizer.vocab), seed))


@pytest.fixture(scope="module")
def train(dataset: Dataset) -> All:
    return every(dataset.train)


def real_slots(ex: All) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, position and label of every real (weight 1) prediction."""
    real = ex.pred_weights > 0
    rows = np.broadcast_to(np.arange(len(ex))[:, None], real.shape)
    return rows[real], ex.pred_positions[real], ex.pred_labels[real]


def originals(ex: All) -> np.ndarray:
    """The token ids before masking: every real prediction slot gets its label back."""
    tokens = ex.tokens.copy()
    rows, positions, labels = real_slots(ex)
    tokens[rows, positions] = labels
    return tokens


def sentences_of(ex: All, i: int, tokens: np.ndarray) -> tuple[tuple, tuple]:
    """Sentences a and b of example i, read off the segment ids."""
    n = ex.valid_lens[i]
    seg = ex.segments[i, :n]
    first_b = int(np.argmax(seg == 1))
    a = tuple(tokens[i, 1 : first_b - 1].tolist())
    b = tuple(tokens[i, first_b : n - 1].tolist())
    return a, b


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def assert_same_examples(x: All | Examples, y: All | Examples) -> None:
    x, y = (every(e) if isinstance(e, Examples) else e for e in (x, y))
    for f in fields(All):
        name = f.name
        a, b = getattr(x, name), getattr(y, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


# --- reading --------------------------------------------------------------------------


def test_a_line_is_kept_as_the_reference_code_keeps_it():
    """d2l's `_read_wiki` tests `len(line.split(' . ')) >= 2` on the raw line and splits
    the stripped one: a one-sentence line ending in ' . ' passes the test and is kept."""
    lines = [
        "",
        " = Valkyria Chronicles = ",
        " one sentence only . ",  # raw: [' one sentence only', ''] -> kept as one sentence
        " first sentence . second sentence . ",
        "no separator at all",
        "ends without a space .",  # no ' . ' anywhere, raw or stripped
        "a . b . c",
    ]
    paragraphs = split_paragraphs(lines)
    assert paragraphs == [
        ["one sentence only ."],
        ["first sentence", "second sentence ."],
        ["a", "b", "c"],
    ]


def test_word_tokenizer_lower_cases_and_splits_on_whitespace():
    tok = Tokenizer("word", RESERVED + ["the", "game", "began"])
    (paragraph,) = split_paragraphs(["  The  Game\tBegan . In 2010 , SEGA  "])
    assert [tok.split(s) for s in paragraph] == [
        [("the", 5), ("game", 6), ("began", 7)],
        [("in", UNK_ID), ("2010", UNK_ID), (",", UNK_ID), ("sega", UNK_ID)],
    ]
    ids, lens = tok.encode_sentences(paragraph)
    assert ids.tolist() == [5, 6, 7, 0, 0, 0, 0] and lens.tolist() == [3, 4]


def test_real_split_gives_the_reference_paragraphs_and_vocabulary(valid_path):
    """d2l 1.0.3's own code on wiki.valid.tokens keeps 1673 paragraphs and builds a
    vocabulary of 4271 tokens at min_freq 5 (a rule applied after strip() gives 1546 and
    4211)."""
    paragraphs = list(read_split(valid_path))
    assert len(paragraphs) == 1673
    assert sum(len(p) == 1 for p in paragraphs) == 1673 - 1546
    tokenizer = train_tokenizer("word", [s for p in paragraphs for s in p], 5, None, True)
    assert len(tokenizer.vocab) == 4271
    # Headings (" = Title = ") have no ' . ' and never become paragraphs.
    assert not any(p[0].startswith("=") for p in paragraphs)


def test_corpus_without_a_usable_paragraph_raises_user_error(tmp_path):
    path = write(tmp_path / "wiki.train.tokens", " = Title = \n\n one sentence only . \n")
    with pytest.raises(UserError, match="no paragraph"):
        build_wikitext(path, None, MAX_LEN, 1, SEED)


def test_non_utf8_corpus_raises_user_error(tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_bytes("caf\u00e9 au lait . le caf\u00e9 est chaud\n".encode("latin-1"))
    with pytest.raises(UserError, match="UTF-8"):
        build_wikitext(path, None, MAX_LEN, 1, SEED)


def test_missing_corpus_file_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_wikitext(tmp_path / "wiki.train.tokens", None, MAX_LEN, 1, SEED)


def test_corpus_whose_pairs_all_exceed_max_len_raises_user_error(tmp_path):
    long = " ".join(["w"] * 20)
    path = write(tmp_path / "wiki.train.tokens", f"{long} . {long}\n")
    with pytest.raises(UserError, match="max_len"):
        build_wikitext(path, None, 16, 1, SEED)


def test_min_freq_above_every_count_raises_user_error(tmp_path):
    path = write(tmp_path / "wiki.train.tokens", "a b . c d\n")
    with pytest.raises(UserError, match="min_freq"):
        build_wikitext(path, None, MAX_LEN, 2, SEED)


# --- vocabulary -----------------------------------------------------------------------


def test_vocab_is_reserved_tokens_then_words_seen_min_freq_times_most_frequent_first():
    tokens = ["b", "a", "c", "a", "b", "a", "d", "<unk>", "<unk>", "<cls>", "e", "e"]
    vocab = build_vocab(tokens, min_freq=2)
    assert vocab[:5] == ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"]
    assert vocab[:5] == RESERVED
    # a:3, then b:2 and e:2 tied (alphabetical); c and d are rarer than min_freq;
    # reserved tokens found in the text are not added twice.
    assert vocab[5:] == ["a", "b", "e"]
    assert token_index(vocab) == {t: i for i, t in enumerate(vocab)}


def test_vocab_of_real_split_holds_exactly_the_words_seen_min_freq_times(dataset, valid_path):
    counts = Counter(t for p in read_split(valid_path) for s in p for t in s.lower().split())
    frequent = {t for t, c in counts.items() if c >= MIN_FREQ} - set(RESERVED)
    assert dataset.vocab[:5] == RESERVED
    assert set(dataset.vocab[5:]) == frequent
    assert len(dataset.vocab) == len(set(dataset.vocab))


def test_unknown_words_map_to_unk():
    vocab = build_vocab(["a", "b", "a", "b"], min_freq=2)  # <reserved>, a, b
    index = token_index(vocab)
    paragraphs = [["a zebra b", "b a"]]  # "zebra" is not in the vocabulary
    ex = build(paragraphs, Tokenizer("word", vocab), 16, np.random.default_rng(0))
    a, _ = sentences_of(ex, 0, originals(ex))
    assert a == (index["a"], UNK_ID, index["b"])


def test_validation_words_outside_the_training_vocab_map_to_unk(dataset, test_split_path):
    valid_tokens = originals(every(dataset.valid))
    assert valid_tokens.max() < len(dataset.vocab)
    train_words = set(dataset.vocab)
    oov = {
        t for p in read_split(test_split_path) for s in p for t in s.lower().split()
    } - train_words
    assert oov, "the test split should have words the valid split's vocabulary lacks"
    assert (valid_tokens == UNK_ID).any()


# --- next-sentence pairs --------------------------------------------------------------


def test_nsp_labels_are_half_random_on_real_split(train):
    n = len(train)
    assert n > 4000
    assert set(np.unique(train.nsp_labels).tolist()) <= {0, 1}
    std = math.sqrt(0.25 / n)
    assert abs(train.nsp_labels.mean() - 0.5) < 4 * std


def test_is_next_pairs_are_consecutive_sentences_and_random_ones_come_from_the_corpus(
    dataset, train, valid_path
):
    index = token_index(dataset.vocab)
    paragraphs = [
        [tuple(index.get(t, UNK_ID) for t in s.lower().split()) for s in p]
        for p in read_split(valid_path)
    ]
    consecutive = {(p[i], p[i + 1]) for p in paragraphs for i in range(len(p) - 1)}
    firsts = {p[i] for p in paragraphs for i in range(len(p) - 1)}
    every_sentence = {s for p in paragraphs for s in p}
    tokens = originals(train)
    random_but_next = 0
    for i in range(len(train)):
        a, b = sentences_of(train, i, tokens)
        if train.nsp_labels[i] == 0:
            assert (a, b) in consecutive, i
        else:
            assert a in firsts, i
            assert b in every_sentence, i
            random_but_next += (a, b) in consecutive
    # A random sentence of a random paragraph is rarely the true next one.
    assert random_but_next < 0.01 * train.nsp_labels.sum()


def test_examples_are_cls_a_sep_b_sep_then_padding(train):
    tokens = originals(train)
    cols = np.arange(MAX_LEN)[None, :]
    real = cols < train.valid_lens[:, None]
    assert (tokens[:, 0] == CLS_ID).all()
    assert (tokens[np.arange(len(train)), train.valid_lens - 1] == SEP_ID).all()
    assert ((tokens == SEP_ID) & real).sum(1).tolist() == [2] * len(train)
    assert ((tokens == CLS_ID) & real).sum(1).tolist() == [1] * len(train)
    assert not ((tokens == PAD_ID) & real).any()
    assert (tokens[~real] == PAD_ID).all()
    # Masking never writes into the padding either.
    assert (train.tokens[~real] == PAD_ID).all()


def test_segment_ids_are_zero_for_cls_a_sep_and_one_for_b_sep(train):
    tokens = originals(train)
    for i in range(len(train)):
        n = train.valid_lens[i]
        first_sep = int(np.argmax(tokens[i] == SEP_ID))
        expected = np.zeros(MAX_LEN, dtype=np.int8)
        expected[first_sep + 1 : n] = 1
        np.testing.assert_array_equal(train.segments[i], expected, err_msg=str(i))


def test_every_example_fits_max_len(dataset):
    for ex in map(every, (dataset.train, dataset.valid)):
        assert ex.tokens.shape == (len(ex), MAX_LEN)
        assert ex.segments.shape == (len(ex), MAX_LEN)
        assert (ex.valid_lens <= MAX_LEN).all()
        assert (ex.valid_lens >= 4).all()  # <cls> <sep> <sep> and at least one word


def test_pair_one_token_too_long_is_dropped_and_one_that_fits_exactly_is_kept():
    tok = Tokenizer("word", build_vocab(list("abcdefghijklm"), min_freq=1))
    short, long = " ".join("abcde"), " ".join("fghijklm")  # 5 and 8 words
    paragraphs = [[short, long]]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        # 5 + 8 + 3 = 16: the is-next pair fits exactly; a random b is 5 or 8 words: fits.
        ex = build(paragraphs, tok, 16, rng)
        assert len(ex) == 1
        a, b = sentences_of(ex, 0, originals(ex))
        assert ex.valid_lens[0] == len(a) + len(b) + 3
        # At 15 the is-next pair (16 tokens) is dropped, never truncated; only a random
        # b of 5 words can make a pair.
        ex = build(paragraphs, tok, 15, np.random.default_rng(seed))
        assert len(ex) <= 1
        if len(ex):
            assert ex.nsp_labels.tolist() == [1]
            assert ex.valid_lens.tolist() == [13]


# --- masked language model ------------------------------------------------------------


def test_masking_never_touches_special_tokens_or_padding(dataset):
    for ex in map(every, (dataset.train, dataset.valid)):
        tokens = originals(ex)
        rows, positions, labels = real_slots(ex)
        assert (positions >= 1).all()
        assert (positions < ex.valid_lens[rows] - 1).all()
        assert not np.isin(tokens[rows, positions], [CLS_ID, SEP_ID, PAD_ID, MASK_ID]).any()
        assert not np.isin(labels, [CLS_ID, SEP_ID, PAD_ID, MASK_ID]).any()


def test_each_example_predicts_fifteen_percent_of_its_tokens(dataset):
    for ex in map(every, (dataset.train, dataset.valid)):
        n_pred = (ex.pred_weights > 0).sum(1)
        expected = [max(1, round(0.15 * int(v))) for v in ex.valid_lens]
        assert n_pred.tolist() == expected


def test_prediction_slots_are_padded_with_position_zero_label_zero_weight_zero(train):
    p = round(0.15 * MAX_LEN)
    assert max_predictions(MAX_LEN) == p
    assert train.pred_positions.shape == train.pred_labels.shape == (len(train), p)
    assert train.pred_weights.shape == (len(train), p)
    assert set(np.unique(train.pred_weights).tolist()) == {0.0, 1.0}
    n_pred = (train.pred_weights > 0).sum(1)
    # Real predictions come first, then padding.
    slots = np.arange(p)[None, :]
    np.testing.assert_array_equal(train.pred_weights > 0, slots < n_pred[:, None])
    pad = train.pred_weights == 0
    assert (train.pred_positions[pad] == 0).all()
    assert (train.pred_labels[pad] == 0).all()


def test_masked_positions_of_an_example_are_distinct(train):
    for i in range(len(train)):
        real = train.pred_weights[i] > 0
        positions = train.pred_positions[i, real]
        assert len(set(positions.tolist())) == len(positions), i


def test_masked_tokens_are_80_percent_mask_10_percent_random_10_percent_kept(train):
    rows, positions, labels = real_slots(train)
    corrupted = train.tokens[rows, positions]
    n = len(labels)
    assert n > 30000
    is_mask = corrupted == MASK_ID
    kept = corrupted == labels
    other = ~is_mask & ~kept
    for observed, p in ((is_mask.mean(), 0.8), (kept.mean(), 0.1), (other.mean(), 0.1)):
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n), (observed, p)


def test_random_replacements_are_vocabulary_words(train, dataset):
    rows, positions, labels = real_slots(train)
    corrupted = train.tokens[rows, positions]
    random = corrupted[(corrupted != MASK_ID) & (corrupted != labels)]
    assert len(random) > 0
    assert (random >= len(RESERVED)).all()
    assert (random < len(dataset.vocab)).all()
    # Spread over the vocabulary, not a handful of ids.
    assert len(np.unique(random)) > 0.5 * len(random)


# --- determinism ----------------------------------------------------------------------


def test_same_seed_builds_identical_examples(valid_path, train):
    again = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED)
    assert_same_examples(again.train, train)


def test_another_seed_shuffles_and_masks_differently(valid_path, train):
    other = every(build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED + 1).train)
    assert other.tokens.shape[1] == train.tokens.shape[1]
    n = min(len(other), len(train))
    assert not np.array_equal(other.tokens[:n], train.tokens[:n])
    assert not np.array_equal(other.nsp_labels[:n], train.nsp_labels[:n])


def test_training_and_validation_splits_use_separate_random_streams(valid_path):
    # The same file as both splits: the two must not be copies of each other.
    data = build_wikitext(valid_path, valid_path, MAX_LEN, MIN_FREQ, SEED)
    train, valid = every(data.train), every(data.valid)
    n = min(len(train), len(valid))
    assert not np.array_equal(train.tokens[:n], valid.tokens[:n])


# --- the cache: the vocabulary and the prepared corpus ---------------------------------


def test_a_second_build_reads_the_vocabulary_and_the_store_from_the_cache(
    valid_path, test_split_path, tmp_path, monkeypatch, dataset
):
    first = build_wikitext(valid_path, test_split_path, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    assert len(list(tmp_path.glob("store-*"))) == len(list(tmp_path.glob("tokenizer-*"))) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("the second call must read the cache, not build")

    monkeypatch.setattr(pipeline_module, "train_tokenizer", no_build)
    monkeypatch.setattr(store_module, "write_split", no_build)
    second = build_wikitext(valid_path, test_split_path, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    assert second.vocab == first.vocab == dataset.vocab
    assert all(isinstance(t, str) for t in second.vocab)
    assert_same_examples(second.train, dataset.train)
    assert_same_examples(second.valid, dataset.valid)


def test_another_seed_or_max_len_reuses_the_prepared_corpus(valid_path, tmp_path, monkeypatch):
    build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)

    def no_build(*args, **kwargs):
        raise AssertionError("a sweep over the seed or max_len must not prepare again")

    monkeypatch.setattr(store_module, "write_split", no_build)
    other = build_wikitext(valid_path, None, MAX_LEN * 2, MIN_FREQ, SEED + 1, tmp_path)
    assert every(other.train).tokens.shape[1] == MAX_LEN * 2


def test_store_key_changes_with_the_corpus_bytes_the_splits_and_the_tokenizer(valid_path, tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_bytes(valid_path.read_bytes())
    corpus = wikitext(path, None)
    tok = Tokenizer("word", RESERVED + ["a", "b"])
    base = store_key(corpus, tok)
    assert store_key(wikitext(path, None), tok) == base
    variants = {
        store_key(wikitext(path, valid_path), tok),
        store_key(corpus, Tokenizer("word", RESERVED + ["a", "c"])),
        store_key(corpus, Tokenizer("word", RESERVED + ["a", "b"], False)),
    }
    with path.open("ab") as f:
        f.write(b" one more . paragraph here \n")
    variants.add(store_key(wikitext(path, None), tok))
    assert base not in variants
    assert len(variants) == 4


def test_vocabulary_cache_key_changes_with_the_tokenizer_settings(valid_path):
    corpus = wikitext(valid_path, None)
    word = TokenizerConfig(name="word", lowercase=True, min_freq=5, vocab_size=None)
    keys = {
        tokenizer_key(corpus, c)
        for c in (
            word,
            TokenizerConfig(name="word", lowercase=False, min_freq=5, vocab_size=None),
            TokenizerConfig(name="word", lowercase=True, min_freq=4, vocab_size=None),
            TokenizerConfig(name="wordpiece", lowercase=True, min_freq=5, vocab_size=900),
            TokenizerConfig(name="wordpiece", lowercase=True, min_freq=5, vocab_size=901),
        )
    }
    assert len(keys) == 5
    assert tokenizer_key(wikitext(valid_path, valid_path), word) in keys  # train split only


# --- batches ---------------------------------------------------------------------------


class Toy:
    """n examples whose batch holds their indices and epochs, to follow the stream."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, indices, epochs=0):
        epochs = np.broadcast_to(epochs, np.shape(indices))
        return {"nsp_labels": torch.from_numpy(indices), "epochs": torch.from_numpy(epochs.copy())}


def stream_indices(stream: BatchStream, steps: int) -> np.ndarray:
    return np.concatenate([stream.indices(s)[0] for s in range(steps)])


def test_batch_is_a_pure_function_of_seed_and_step(train, dataset):
    a = BatchStream(dataset.train, batch_size=4, seed=7)
    b = BatchStream(dataset.train, batch_size=4, seed=7)
    # b is asked in another order, as a resumed run would.
    later = {step: b.batch(step) for step in (9, 3, 0, 12, 5)}
    for step, batch in later.items():
        expected = a.batch(step)
        for key in expected:
            assert torch.equal(batch[key], expected[key]), (step, key)


def test_another_seed_gives_another_order():
    a = stream_indices(BatchStream(Toy(50), 8, seed=0), 20)
    b = stream_indices(BatchStream(Toy(50), 8, seed=1), 20)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (12, 4), (7, 7), (100, 32)])
def test_every_example_is_seen_once_per_epoch(n, batch_size):
    stream = BatchStream(Toy(n), batch_size, seed=3)
    epochs = 4
    steps = -(-epochs * n // batch_size)
    seen = stream_indices(stream, steps)
    assert all(len(stream.indices(s)[0]) == batch_size for s in range(steps))
    epoch_orders = [seen[e * n : (e + 1) * n] for e in range(epochs)]
    for order in epoch_orders:
        assert sorted(order.tolist()) == list(range(n))
    assert not all(np.array_equal(epoch_orders[0], o) for o in epoch_orders[1:])


def test_corpus_smaller_than_a_batch_still_gives_full_batches():
    n, batch_size = 3, 8
    stream = BatchStream(Toy(n), batch_size, seed=0, dynamic=True)
    batch = stream.batch(0)
    assert batch["nsp_labels"].shape == (batch_size,)
    assert batch["epochs"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    seen = stream_indices(stream, 6)  # 48 items = 16 epochs of 3
    for e in range(len(seen) // n):
        assert sorted(seen[e * n : (e + 1) * n].tolist()) == list(range(n))


def test_batch_rows_are_the_examples_at_its_indices_with_the_models_dtypes(train, dataset):
    stream = BatchStream(dataset.train, batch_size=16, seed=0)
    idx, _ = stream.indices(5)
    batch = stream.batch(5)
    assert set(batch) == {f.name for f in fields(All)}
    for key, value in batch.items():
        expected = torch.float32 if key == "pred_weights" else torch.long
        assert value.dtype == expected, key
        np.testing.assert_array_equal(value.numpy(), getattr(train, key)[idx], err_msg=key)


def test_an_examples_masks_do_not_depend_on_its_batch_or_rank(dataset):
    """What makes resume, DataLoader workers and each rank building its own share exact."""
    ex = dataset.train
    alone = ex.batch(np.array([3, 7]))
    among = ex.batch(np.array([9, 7, 1, 3]))
    for key in alone:
        assert torch.equal(alone[key][0], among[key][3]) and torch.equal(
            alone[key][1], among[key][1]
        )
    stream = BatchStream(ex, batch_size=8, seed=0)
    shares = [stream.batch(2, rank, 2) for rank in (0, 1)]
    whole = stream.batch(2)
    for key in whole:
        assert torch.equal(torch.cat([s[key] for s in shares]), whole[key]), key


def test_worker_processes_build_the_same_batches_as_the_loop(dataset):
    stream = BatchStream(dataset.train, batch_size=32, seed=0, dynamic=True)
    steps = range(3, 9)
    here = list(batch_loader(stream, steps, 0, 1, workers=0, pin=False))
    there = list(batch_loader(stream, steps, 0, 1, workers=2, pin=False))
    for a, b in zip(here, there, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_prepared_split_pickles_as_its_files_not_its_tokens(tmp_path, valid_path):
    data = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    assert len(pickle.dumps(data.train.split)) < 4096  # paths and metadata, no tokens
    again = pickle.loads(pickle.dumps(data.train))
    assert isinstance(again.split.tokens, np.memmap)
    assert_same_examples(again, data.train)


def test_eval_batches_cover_the_split_in_order(dataset):
    valid = every(dataset.valid)
    batches = list(eval_batches(dataset.valid, batch_size=100, max_batches=0))
    assert len(batches) == -(-len(valid) // 100)
    assert np.array_equal(torch.cat([b["tokens"] for b in batches]).numpy(), valid.tokens)
    assert len(list(eval_batches(dataset.valid, batch_size=100, max_batches=3))) == 3


def test_dynamic_masking_draws_new_masks_each_epoch_with_the_same_rules(dataset):
    from bertpretrain.data.masking import candidates

    ex = dataset.train
    idx = np.arange(2000)
    first, again, other = ex.batch(idx, 0), ex.batch(idx, 0), ex.batch(idx, 1)
    assert all(torch.equal(first[k], again[k]) for k in first)  # a pure function
    assert not torch.equal(first["pred_positions"], other["pred_positions"])  # fresh masks
    real = other["pred_weights"] > 0
    n = other["valid_lens"]
    assert torch.equal(real.sum(1), torch.round(0.15 * n).clamp(min=1).long())
    rows = torch.arange(len(n))[:, None].expand_as(real)
    assert candidates(other["segments"], n)[rows[real], other["pred_positions"][real]].all()

    # Restoring the labels gives back the original words, whichever masks were drawn.
    def original(b):
        r = b["pred_weights"] > 0
        t = b["tokens"].clone()
        t[rows[r], b["pred_positions"][r]] = b["pred_labels"][r]
        return t

    assert torch.equal(original(first), original(other))
    static = BatchStream(ex, 512, seed=0)
    dynamic = BatchStream(ex, 512, seed=0, dynamic=True)
    step = len(ex) // 512 + 2  # a batch of the second epoch
    assert torch.equal(static.batch(step)["tokens"], ex.batch(static.indices(step)[0])["tokens"])
    assert not torch.equal(dynamic.batch(step)["tokens"], static.batch(step)["tokens"])
