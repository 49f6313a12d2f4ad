"""Data pipeline: reading, vocabulary, NSP pairs, masked-LM targets, the cache and batches.

Most tests use the real WikiText-2 valid split (test split as validation) at max_len 64,
built once per module; the rules at the edges use small synthetic corpora.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_wikitext

from bertpretrain.config import TokenizerConfig
from bertpretrain.data import examples as examples_module
from bertpretrain.data.batches import BatchStream, eval_batches, to_tensors
from bertpretrain.data.corpus import read_split, split_paragraphs, wikitext
from bertpretrain.data.examples import (
    Dataset,
    Examples,
    build_examples,
    examples_key,
    max_predictions,
    tokenizer_key,
)
from bertpretrain.data.store import encode_split
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
def test_path(wikitext_dir: Path) -> Path:
    return wikitext_dir / "wiki.test.tokens"


@pytest.fixture(scope="module")
def dataset(valid_path: Path, test_path: Path) -> Dataset:
    """The real valid split as training data, the test split as validation, built once."""
    return build_wikitext(valid_path, test_path, MAX_LEN, MIN_FREQ, SEED)


@pytest.fixture(scope="module")
def train(dataset: Dataset) -> Examples:
    return dataset.train


def real_slots(ex: Examples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, position and label of every real (weight 1) prediction."""
    real = ex.pred_weights > 0
    rows = np.broadcast_to(np.arange(len(ex))[:, None], real.shape)
    return rows[real], ex.pred_positions[real], ex.pred_labels[real]


def originals(ex: Examples) -> np.ndarray:
    """The token ids before masking: every real prediction slot gets its label back."""
    tokens = ex.tokens.copy()
    rows, positions, labels = real_slots(ex)
    tokens[rows, positions] = labels
    return tokens


def sentences_of(ex: Examples, i: int, tokens: np.ndarray) -> tuple[tuple, tuple]:
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


def assert_same_examples(x: Examples, y: Examples) -> None:
    for name in Examples.__dataclass_fields__:
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
    tok = Tokenizer("word", vocab)
    ex = build_examples(encode_split(paragraphs, tok), tok, 16, np.random.default_rng(0))
    a, _ = sentences_of(ex, 0, originals(ex))
    assert a == (index["a"], UNK_ID, index["b"])


def test_validation_words_outside_the_training_vocab_map_to_unk(dataset, test_path):
    valid_tokens = originals(dataset.valid)
    assert valid_tokens.max() < len(dataset.vocab)
    train_words = set(dataset.vocab)
    oov = {t for p in read_split(test_path) for s in p for t in s.lower().split()} - train_words
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
    for ex in (dataset.train, dataset.valid):
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
        ex = build_examples(encode_split(paragraphs, tok), tok, 16, rng)
        assert len(ex) == 1
        a, b = sentences_of(ex, 0, originals(ex))
        assert ex.valid_lens[0] == len(a) + len(b) + 3
        # At 15 the is-next pair (16 tokens) is dropped, never truncated; only a random
        # b of 5 words can make a pair.
        ex = build_examples(encode_split(paragraphs, tok), tok, 15, np.random.default_rng(seed))
        assert len(ex) <= 1
        if len(ex):
            assert ex.nsp_labels.tolist() == [1]
            assert ex.valid_lens.tolist() == [13]


# --- masked language model ------------------------------------------------------------


def test_masking_never_touches_special_tokens_or_padding(dataset):
    for ex in (dataset.train, dataset.valid):
        tokens = originals(ex)
        rows, positions, labels = real_slots(ex)
        assert (positions >= 1).all()
        assert (positions < ex.valid_lens[rows] - 1).all()
        assert not np.isin(tokens[rows, positions], [CLS_ID, SEP_ID, PAD_ID, MASK_ID]).any()
        assert not np.isin(labels, [CLS_ID, SEP_ID, PAD_ID, MASK_ID]).any()


def test_each_example_predicts_fifteen_percent_of_its_tokens(dataset):
    for ex in (dataset.train, dataset.valid):
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
    other = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED + 1).train
    assert other.tokens.shape[1] == train.tokens.shape[1]
    n = min(len(other), len(train))
    assert not np.array_equal(other.tokens[:n], train.tokens[:n])
    assert not np.array_equal(other.nsp_labels[:n], train.nsp_labels[:n])


def test_training_and_validation_splits_use_separate_random_streams(valid_path):
    # The same file as both splits: the two must not be copies of each other.
    data = build_wikitext(valid_path, valid_path, MAX_LEN, MIN_FREQ, SEED)
    n = min(len(data.train), len(data.valid))
    assert not np.array_equal(data.train.tokens[:n], data.valid.tokens[:n])


# --- the examples cache ---------------------------------------------------------------


def test_cache_round_trip_gives_back_the_same_dataset(valid_path, tmp_path, monkeypatch):
    first = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    key = examples_key(wikitext(valid_path, None), first.tokenizer, MAX_LEN, False, SEED)
    assert files[0].name == f"examples-{key}.npz"

    def no_build(*args, **kwargs):
        raise AssertionError("the second call must read the cache, not build")

    monkeypatch.setattr(examples_module, "build_examples", no_build)
    monkeypatch.setattr(examples_module, "train_tokenizer", no_build)
    second = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    assert second.vocab == first.vocab
    assert all(isinstance(t, str) for t in second.vocab)
    assert second.valid is None
    assert_same_examples(second.train, first.train)


def test_cache_round_trip_keeps_the_validation_split(valid_path, test_path, tmp_path, dataset):
    build_wikitext(valid_path, test_path, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    cached = build_wikitext(valid_path, test_path, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    assert cached.vocab == dataset.vocab
    assert_same_examples(cached.train, dataset.train)
    assert_same_examples(cached.valid, dataset.valid)


def test_cache_key_changes_with_every_setting_and_the_corpus_bytes(valid_path, tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_bytes(valid_path.read_bytes())
    corpus = wikitext(path, None)
    tok = Tokenizer("word", RESERVED + ["a", "b"])
    base = examples_key(corpus, tok, MAX_LEN, False, SEED)
    assert examples_key(wikitext(path, None), tok, MAX_LEN, False, SEED) == base
    variants = {
        examples_key(corpus, tok, MAX_LEN + 1, False, SEED),
        examples_key(corpus, tok, MAX_LEN, False, SEED + 1),
        examples_key(wikitext(path, valid_path), tok, MAX_LEN, False, SEED),
        examples_key(corpus, Tokenizer("word", RESERVED + ["a", "c"]), MAX_LEN, False, SEED),
        examples_key(corpus, Tokenizer("word", RESERVED + ["a", "b"], False), MAX_LEN, False, SEED),
    }
    # Whole-word masking changes nothing for a word-level vocabulary, so nor does its key.
    assert examples_key(corpus, tok, MAX_LEN, True, SEED) == base
    with path.open("ab") as f:
        f.write(b" one more . paragraph here \n")
    variants.add(examples_key(wikitext(path, None), tok, MAX_LEN, False, SEED))
    assert base not in variants
    assert len(variants) == 6


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


def test_changed_seed_writes_a_second_cache_file(valid_path, tmp_path):
    build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED + 1, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_unreadable_cache_file_is_rebuilt(valid_path, tmp_path, train):
    tok = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED).tokenizer
    key = examples_key(wikitext(valid_path, None), tok, MAX_LEN, False, SEED)
    (tmp_path / f"examples-{key}.npz").write_bytes(b"not a numpy archive")
    data = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    assert_same_examples(data.train, train)


def test_truncated_cache_file_is_rebuilt(valid_path, tmp_path, train):
    build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    data = build_wikitext(valid_path, None, MAX_LEN, MIN_FREQ, SEED, tmp_path)
    assert_same_examples(data.train, train)


# --- batches --------------------------------------------------------------------------


def toy_batch(n: int) -> dict[str, torch.Tensor]:
    return {
        "nsp_labels": torch.arange(n),
        "tokens": torch.arange(n * 3).view(n, 3),
    }


def stream_indices(stream: BatchStream, steps: int) -> np.ndarray:
    return np.concatenate([stream.indices(s) for s in range(steps)])


def test_batch_is_a_pure_function_of_seed_and_step():
    a = BatchStream(toy_batch(10), batch_size=4, seed=7)
    b = BatchStream(toy_batch(10), batch_size=4, seed=7)
    # b is asked in another order, as a resumed run would.
    later = {step: b.batch(step) for step in (9, 3, 0, 12, 5)}
    for step, batch in later.items():
        expected = a.batch(step)
        for key in expected:
            assert torch.equal(batch[key], expected[key]), (step, key)
    assert torch.equal(a.batch(3)["nsp_labels"], a.batch(3)["nsp_labels"])


def test_another_seed_gives_another_order():
    a = stream_indices(BatchStream(toy_batch(50), 8, seed=0), 20)
    b = stream_indices(BatchStream(toy_batch(50), 8, seed=1), 20)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (12, 4), (7, 7), (100, 32)])
def test_every_example_is_seen_once_per_epoch(n, batch_size):
    stream = BatchStream(toy_batch(n), batch_size, seed=3)
    epochs = 4
    steps = -(-epochs * n // batch_size)
    seen = stream_indices(stream, steps)
    assert all(len(stream.indices(s)) == batch_size for s in range(steps))
    epoch_orders = [seen[e * n : (e + 1) * n] for e in range(epochs)]
    for order in epoch_orders:
        assert sorted(order.tolist()) == list(range(n))
    assert not all(np.array_equal(epoch_orders[0], o) for o in epoch_orders[1:])


def test_corpus_smaller_than_a_batch_still_gives_full_batches():
    n, batch_size = 3, 8
    stream = BatchStream(toy_batch(n), batch_size, seed=0)
    batch = stream.batch(0)
    assert batch["nsp_labels"].shape == (batch_size,)
    assert batch["tokens"].shape == (batch_size, 3)
    seen = stream_indices(stream, 6)  # 48 items = 16 epochs of 3
    for e in range(len(seen) // n):
        assert sorted(seen[e * n : (e + 1) * n].tolist()) == list(range(n))


def test_batch_rows_are_the_examples_at_its_indices(train):
    data = to_tensors(train)
    stream = BatchStream(data, batch_size=16, seed=0)
    idx = torch.from_numpy(stream.indices(5))
    batch = stream.batch(5)
    assert set(batch) == set(data)
    for key, value in data.items():
        assert torch.equal(batch[key], value[idx]), key


def test_to_tensors_gives_long_ids_and_float_weights(train):
    data = to_tensors(train)
    assert set(data) == set(Examples.__dataclass_fields__)
    for key, value in data.items():
        expected = torch.float32 if key == "pred_weights" else torch.long
        assert value.dtype == expected, key
        assert value.shape[0] == len(train)
        np.testing.assert_array_equal(value.numpy(), getattr(train, key))


def test_eval_batches_cover_the_split_in_order(dataset):
    data = to_tensors(dataset.valid)
    batches = list(eval_batches(data, batch_size=100, max_batches=0))
    assert len(batches) == -(-len(dataset.valid) // 100)
    assert torch.equal(torch.cat([b["tokens"] for b in batches]), data["tokens"])
    assert len(list(eval_batches(data, batch_size=100, max_batches=3))) == 3


def test_dynamic_masking_draws_new_masks_with_the_same_rules(dataset):
    import torch

    from bertpretrain.data.batches import to_tensors
    from bertpretrain.data.masking import candidates, remask

    batch = {k: v[:2000] for k, v in to_tensors(dataset.train).items()}
    first = remask(batch, len(dataset.vocab), torch.Generator().manual_seed(1))
    again = remask(batch, len(dataset.vocab), torch.Generator().manual_seed(1))
    other = remask(first, len(dataset.vocab), torch.Generator().manual_seed(2))
    assert all(torch.equal(first[k], again[k]) for k in first)  # deterministic in the seed
    assert not torch.equal(first["pred_positions"], other["pred_positions"])  # fresh masks
    real = first["pred_weights"] > 0
    n = batch["valid_lens"]
    assert torch.equal(real.sum(1), torch.round(0.15 * n).clamp(min=1).long())
    rows = torch.arange(len(n))[:, None].expand_as(real)
    assert candidates(batch["segments"], n)[rows[real], first["pred_positions"][real]].all()

    # Restoring the labels gives back the original words, whichever masks were drawn.
    def original(b):
        r = b["pred_weights"] > 0
        t = b["tokens"].clone()
        t[rows[r], b["pred_positions"][r]] = b["pred_labels"][r]
        return t

    assert torch.equal(original(first), original(other)) and torch.equal(
        original(first), original(batch)
    )
    corrupted = first["tokens"][rows[real], first["pred_positions"][real]]
    assert 0.75 < (corrupted == 2).float().mean().item() < 0.85  # <mask> about 80%
