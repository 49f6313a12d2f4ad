"""data.pairing=bert: google-research/bert's create_pretraining_data.py rules, each checked
on paragraphs whose sentence lengths make the rule visible; and both rules end to end."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import TINY_ARGS, run_cli

from bertpretrain.data.corpus import BREAK, read_split, wikitext
from bertpretrain.data.pairing import Pairs, bert_pairs
from bertpretrain.data.store import Split, encode_split
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import RESERVED

WORDS = [f"w{i}" for i in range(50)]
TOKENIZER = Tokenizer("word", RESERVED + WORDS)


def corpus(paragraphs: int, sentences: int, words: int, seed: int = 0, per_doc: int = 1) -> Split:
    """`paragraphs` paragraphs of `sentences` sentences of `words` random words each, in
    documents of `per_doc` paragraphs (one each by default: the rules below are seen per
    document, and a paragraph is then one)."""
    rng = np.random.default_rng(seed)
    text = []
    for i in range(paragraphs):
        if i % per_doc == 0:
            text.append(BREAK)
        text.append([" ".join(rng.choice(WORDS, words)) for _ in range(sentences)])
    return encode_split(text, TOKENIZER)


def paragraph_of(split: Split, token: np.ndarray) -> np.ndarray:
    """The paragraph holding each token offset."""
    sentence = np.searchsorted(split.sentences, token, side="right") - 1
    return np.searchsorted(split.paragraphs, sentence, side="right") - 1


def all_pairs(split: Split, max_len: int, short: float = 0.0, seeds=range(5)) -> list[Pairs]:
    return [bert_pairs(split, max_len, np.random.default_rng(s), short) for s in seeds]


def test_segments_fill_up_to_max_len_minus_3_and_never_beyond():
    split = corpus(40, 12, 9)
    for pairs in all_pairs(split, 64):
        total = pairs.a_len + pairs.b_len
        assert (total <= 61).all() and (pairs.a_len > 0).all() and (pairs.b_len > 0).all()
        # a chunk stops once it reaches the target: all but a paragraph's last come close
        assert np.median(total) >= 52


def test_short_seq_prob_makes_that_share_of_paragraphs_aim_shorter():
    split = corpus(300, 20, 9)
    full = np.concatenate([p.a_len + p.b_len for p in all_pairs(split, 128, 0.0, range(2))])
    short = np.concatenate([p.a_len + p.b_len for p in all_pairs(split, 128, 1.0, range(2))])
    assert np.median(full) >= 110 and np.median(short) < 0.7 * np.median(full)
    # at 0.1, a tenth of the paragraphs draw a target in [2, 125]; 70% of those are < 90
    aiming_low = []
    for pairs in all_pairs(split, 128, 0.1, range(2)):
        doc = paragraph_of(split, pairs.a_start)
        longest = np.zeros(len(split))
        np.maximum.at(longest, doc, pairs.a_len + pairs.b_len)
        aiming_low.append(longest < 90)
    share = np.concatenate(aiming_low).mean()
    assert 0.03 < share < 0.13, share


def test_without_truncation_a_and_b_are_whole_sentences_split_at_a_random_one():
    split = corpus(30, 6, 5)  # a paragraph (30 tokens) is one chunk at max_len 512
    boundaries = set(split.sentences.tolist())
    first_b = []
    for pairs in all_pairs(split, 512):
        for a0, la, b0, lb, nsp in zip(
            pairs.a_start, pairs.a_len, pairs.b_start, pairs.b_len, pairs.nsp, strict=True
        ):
            assert {a0, a0 + la, b0, b0 + lb} <= boundaries
            if nsp == 0:  # b is the rest of the chunk, right after a
                assert b0 == a0 + la
                first_b.append(int(np.searchsorted(split.sentences, b0)) % 6)
    assert len(set(first_b)) >= 4  # the split point is drawn, not fixed


def test_a_random_b_comes_from_another_paragraph_and_the_unused_sentences_are_put_back():
    split = corpus(30, 6, 5)
    sentence = {int(t): i for i, t in enumerate(split.sentences)}
    randoms = 0
    for pairs in all_pairs(split, 512):
        doc_a = paragraph_of(split, pairs.a_start)
        doc_b = paragraph_of(split, pairs.b_start)
        assert (doc_b[pairs.nsp == 0] == doc_a[pairs.nsp == 0]).all()
        assert (doc_b[pairs.nsp == 1] != doc_a[pairs.nsp == 1]).all()
        for k in np.flatnonzero(pairs.nsp == 1):
            a_end = sentence[int(pairs.a_start[k] + pairs.a_len[k])]
            if a_end == split.paragraphs[doc_a[k] + 1]:
                continue  # nothing unused: the chunk was a single sentence, or a ended it
            # the next instance of this paragraph starts where a ended
            assert k + 1 < len(pairs.nsp) and doc_a[k + 1] == doc_a[k]
            assert sentence[int(pairs.a_start[k + 1])] == a_end
            randoms += 1
    assert randoms > 20


def test_the_longer_segment_is_trimmed_at_a_random_end_until_the_pair_fits():
    split = corpus(20, 3, 40)  # every sentence alone overflows max_len 32
    boundaries = set(split.sentences.tolist())
    front = back = 0
    for pairs in all_pairs(split, 32):
        assert (pairs.a_len + pairs.b_len == 29).all()
        assert (abs(pairs.a_len - pairs.b_len) <= 1).all()  # the longer one was cut each time
        front += sum(int(a) not in boundaries for a in pairs.a_start)
        back += sum(int(a + n) not in boundaries for a, n in zip(pairs.a_start, pairs.a_len))
    assert front > 10 and back > 10


def document_of(split: Split, token: np.ndarray) -> np.ndarray:
    return np.searchsorted(split.documents, paragraph_of(split, token), side="right") - 1


def test_a_document_of_several_paragraphs_fills_sequences_across_them_but_no_further():
    split = corpus(60, 3, 5, per_doc=6)  # paragraphs of 15 tokens, documents of 90
    assert len(split.documents) - 1 == 10
    for pairs in all_pairs(split, 64):
        same = pairs.nsp == 0
        full = (pairs.a_len + pairs.b_len)[same] >= 55  # 4 paragraphs' worth, of 15 each
        assert full.mean() >= 1 / 3
        doc_a = document_of(split, pairs.a_start)
        assert (document_of(split, pairs.a_start + pairs.a_len - 1) == doc_a).all()
        assert (document_of(split, pairs.b_start)[same] == doc_a[same]).all()
        assert (document_of(split, pairs.b_start)[~same] != doc_a[~same]).all()


def test_wikitext_articles_are_the_documents_and_fill_512(tmp_path, wikitext_dir):
    """The store keeps WikiText's articles (60 in the validation split), so BERT's rule
    fills sequences from a whole article, not from one paragraph."""
    path = wikitext_dir / "wiki.valid.tokens"
    articles = encode_split(wikitext(path, None).read_train(), TOKENIZER)
    paragraphs = encode_split(read_split(path), TOKENIZER)  # no breaks: one document
    assert len(articles.documents) - 1 == 60 and len(paragraphs.documents) - 1 == 1
    assert np.array_equal(articles.paragraphs, paragraphs.paragraphs)  # d2l's, unchanged
    pairs = bert_pairs(articles, 512, np.random.default_rng(0))
    assert np.mean(pairs.a_len + pairs.b_len) > 400


# bert_pairs' every pair on WikiText-2's validation split (its 60 articles), for these
# (max_len, seed, short_seq_prob): the sha256 of the five arrays, as int64, in order, taken
# from the nested-loop version of the rule. A rewrite must keep every pair and every draw.
BERT_PAIRS_ON_WIKITEXT = [(64, 0, 0.1), (128, 1, 0.1), (512, 2, 0.5), (32, 3, 0.0)]
BERT_PAIRS_DIGEST = "24066ede809865b9a1495ec610516c24a2d549bd1c3b961a29f8b039a624af15"


def test_bert_pairs_on_wikitext_are_the_pinned_ones_bit_for_bit(wikitext_dir):
    articles = wikitext(wikitext_dir / "wiki.valid.tokens", None).read_train()
    split = encode_split(articles, TOKENIZER)
    digest = hashlib.sha256()
    for max_len, seed, short in BERT_PAIRS_ON_WIKITEXT:
        pairs = bert_pairs(split, max_len, np.random.default_rng(seed), short)
        for field in (pairs.a_start, pairs.a_len, pairs.b_start, pairs.b_len, pairs.nsp):
            digest.update(np.ascontiguousarray(field, np.int64).tobytes())
    assert digest.hexdigest() == BERT_PAIRS_DIGEST


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["d2l", "bert"])
def test_both_pairing_rules_train_and_record_their_tokens_per_example(
    pairing, tmp_path, cli_env, wikitext_dir
):
    args = [*TINY_ARGS, "data.max_len=128", f"data.pairing={pairing}", "trainer.max_steps=4"]
    result = run_cli(["train", *args, "hydra.run.dir=run"], tmp_path, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert f"({pairing} pairing)" in (tmp_path / "run" / "train.log").read_text()
    tokens = summary["tokens_per_example"]
    # d2l pairs two sentences (about 50 tokens); bert fills segments towards 125 from
    # whole articles (about 110; paragraphs alone allowed 92)
    assert (tokens < 70) if pairing == "d2l" else (tokens > 100), tokens


def test_pairs_are_saved_beside_the_store_and_reused(tmp_path, monkeypatch, wikitext_dir):
    """A restart or a sweep job finds its pairs instead of walking every sentence again;
    another seed or length makes its own."""
    from bertpretrain.config import TokenizerConfig
    from bertpretrain.data import pairing, pipeline

    corpus = wikitext(wikitext_dir / "wiki.valid.tokens", None)
    word = TokenizerConfig("word", True, 5, None)
    load = pipeline.load_dataset
    first = load(corpus, word, 128, 0, tmp_path, pairing="bert").train.pairs
    made = []
    real = pairing.bert_pairs
    monkeypatch.setattr(pairing, "bert_pairs", lambda *a: made.append(a) or real(*a))
    again = load(corpus, word, 128, 0, tmp_path, pairing="bert").train.pairs
    assert not made
    for field in ("a_start", "a_len", "b_start", "b_len", "nsp"):
        assert np.array_equal(getattr(again, field), getattr(first, field))
    other = load(corpus, word, 128, 1, tmp_path, pairing="bert").train.pairs
    assert made and not np.array_equal(other.a_start, first.a_start)
