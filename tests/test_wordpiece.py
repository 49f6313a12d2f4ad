"""tokenizer=wordpiece: a WordPiece vocabulary trained on the corpus, whole-word masking,
and the vocabulary travelling with the run (cache, checkpoint, resume, encode, export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, every, run_cli

from bertpretrain.config import TokenizerConfig
from bertpretrain.data.corpus import read_split, wikitext
from bertpretrain.data.examples import max_predictions
from bertpretrain.data.masking import candidates
from bertpretrain.data.pipeline import load_dataset
from bertpretrain.data.tokenizer import PREFIX, Tokenizer, from_state, train_tokenizer
from bertpretrain.data.vocab import RESERVED, UNK_ID
from bertpretrain.encode import Encoder
from bertpretrain.training import checkpoint

pytest.importorskip("tokenizers", reason="install the wordpiece extra: pip install -e '.[dev]'")

VOCAB = 3000  # WikiText-2's valid split has ~200k words: a small vocabulary trains in a second
WORDPIECE = TokenizerConfig(name="wordpiece", lowercase=True, min_freq=2, vocab_size=VOCAB)
ARGS = [
    *TINY_ARGS,
    "tokenizer=wordpiece",
    f"tokenizer.vocab_size={VOCAB}",
    "data.whole_word_mask=true",
    "trainer.max_steps=3",
]


@pytest.fixture(scope="module")
def sentences(wikitext_dir) -> list[str]:
    return [s for p in read_split(wikitext_dir / "wiki.valid.tokens") for s in p]


@pytest.fixture(scope="module")
def trained(sentences) -> Tokenizer:
    return train_tokenizer("wordpiece", sentences, 2, VOCAB, True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_env) -> Path:
    """One CLI run trained with tokenizer=wordpiece and whole-word masking."""
    cwd = tmp_path_factory.mktemp("wordpiece")
    result = run_cli(["train", *ARGS, "hydra.run.dir=outputs/wp"], cwd, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "outputs" / "wp"


# --- the vocabulary ------------------------------------------------------------------------


def test_vocabulary_has_the_configured_size_reserved_ids_first_and_word_pieces(trained):
    vocab = trained.vocab
    assert len(vocab) == VOCAB
    assert vocab[:5] == RESERVED
    pieces = [t for t in vocab if t.startswith(PREFIX)]
    assert len(pieces) > 300  # word-internal pieces, BERT's `##` convention
    assert "the" in vocab and "photogenic" not in vocab  # frequent words whole, rare ones split


def test_rare_words_split_into_known_pieces_instead_of_unk(trained):
    pieces = trained.split("The unbelievably photogenic crane")
    words = [w for w, _ in pieces]
    tokens = [trained.vocab[i] for _, i in pieces]
    assert UNK_ID not in [i for _, i in pieces]
    assert words[0] == tokens[0] == "the"
    assert words.count("photogenic") > 1  # several pieces, each naming the word it is from
    # The pieces of one word rebuild it: the first whole, the rest behind "##".
    word = [t for w, t in zip(words, tokens) if w == "photogenic"]
    assert word[0] + "".join(t[len(PREFIX) :] for t in word[1:]) == "photogenic"
    assert all(t.startswith(PREFIX) for t in word[1:])


def test_tokenizer_rebuilt_from_its_vocabulary_gives_the_same_ids(trained, wikitext_dir):
    """A checkpoint stores the vocabulary list and settings; that is all it takes."""
    rebuilt = from_state({"vocab": list(trained.vocab), "tokenizer": trained.settings()})
    test = [s for p in read_split(wikitext_dir / "wiki.test.tokens") for s in p]
    ids, lens = trained.encode_sentences(test)
    again, again_lens = rebuilt.encode_sentences(test)
    assert np.array_equal(ids, again) and np.array_equal(lens, again_lens)
    assert lens.sum() > len(" ".join(test).split())  # more pieces than words
    assert rebuilt == trained


def exact_ids(tokenizer: Tokenizer, sentences: list[str]) -> tuple[list[int], list[int]]:
    """`tokenizers` on each whole sentence: what encode does, the reference for the batch."""
    pieces = [tokenizer.split(s) for s in sentences]
    return [i for p in pieces for _, i in p], [len(p) for p in pieces]


ODD = [
    "a\x0bb c",  # Python splits at \v; BERT deletes it: one word "ab"
    "a\x1fb\x85c d\x0ce",
    "x\u2028y",
    "Café naïve 東京タワー",
    "a<unk>b <cls> [CLS]",
    "don't U.S. 3.5 @-@",
    "",
    "   ",
    "zero\u200bwidth nul\x00x \ufffd",
    "emoji 🙂 ok Ⅻ ﬁne ß",
    "x" * 150,  # over max_input_chars_per_word: one <unk>
]


def test_batch_tokenisation_equals_tokenising_each_sentence_whole(trained, wikitext_dir):
    """Training examples tokenise each distinct word once; that must give exactly what
    `tokenizers` gives a whole sentence (as encode and export do), odd characters included."""
    sentences = [s for p in read_split(wikitext_dir / "wiki.test.tokens") for s in p] + ODD
    ids, lens = trained.encode_sentences(sentences)
    expected_ids, expected_lens = exact_ids(trained, sentences)
    assert lens.tolist() == expected_lens
    assert ids.tolist() == expected_ids
    # Word by word would be wrong there: the fallback to whole sentences is needed.
    naive = [i for word in ODD[0].split() for _, i in trained.split(word)]
    assert naive != exact_ids(trained, ODD[:1])[0]


def test_literal_unk_in_wikitext_is_the_unknown_token(trained):
    assert [i for _, i in trained.split("the <unk> river")][1] == UNK_ID


def test_continuation_table_marks_exactly_the_hash_pieces(trained):
    table = trained.continuation()
    assert table.shape == (VOCAB,)
    assert [t for t, c in zip(trained.vocab, table) if c] == [
        t for t in trained.vocab if t.startswith("##")
    ]
    assert Tokenizer("word", RESERVED + ["##a"]).continuation() is None  # words are words


def test_cased_tokenizer_keeps_case(sentences):
    cased = train_tokenizer("wordpiece", sentences[:3000], 2, 1500, False)
    assert cased.split("The")[0][0] == "The"
    assert any(t[:1].isupper() for t in cased.vocab)


# --- whole-word masking on real examples ---------------------------------------------------


def test_whole_word_masking_predicts_every_piece_of_a_chosen_word(wikitext_dir, trained):
    data = load_dataset(
        wikitext(wikitext_dir / "wiki.valid.tokens", None),
        WORDPIECE,
        64,
        0,
        whole_word_mask=True,
        tokenizer=trained,
    )
    ex = every(data.train)
    original = ex.tokens.copy()
    rows, slots = np.nonzero(ex.pred_weights)
    original[rows, ex.pred_positions[rows, slots]] = ex.pred_labels[rows, slots]
    cont = trained.continuation()[original]  # (N, L)
    cand = candidates(*(torch.from_numpy(a).long() for a in (ex.segments, ex.valid_lens))).numpy()
    cont &= cand & np.roll(cand, 1, axis=1)
    predicted = np.zeros_like(cand)
    predicted[rows, ex.pred_positions[rows, slots]] = True
    # A word = a start and the continuation pieces after it: predicted all or none, except
    # the documented cut of a first word longer than the prediction slots.
    starts_or_cont = np.where(cont, 0, np.arange(cand.shape[1]))
    word_of = np.maximum.accumulate(starts_or_cont, axis=1)
    full = ex.pred_weights.sum(1) == max_predictions(64)
    for r in np.flatnonzero(~full)[:2000]:
        chosen = set(word_of[r, predicted[r]].tolist())
        in_chosen = np.isin(word_of[r], list(chosen)) & cand[r]
        assert np.array_equal(in_chosen, predicted[r]), r
    multi = (predicted & cont).any(1).mean()
    assert multi > 0.05  # multi-piece words are really chosen
    budget = np.maximum(1, np.round(0.15 * ex.valid_lens))
    fill = ex.pred_weights.sum(1) / budget
    assert 0.85 < fill.mean() <= 1.05  # close to BERT's 15%: whole words rarely overshoot


def test_whole_word_masking_changes_the_examples_only_for_word_pieces(wikitext_dir, trained):
    corpus = wikitext(wikitext_dir / "wiki.valid.tokens", None)
    plain = every(load_dataset(corpus, WORDPIECE, 64, 0, tokenizer=trained).train)
    whole = every(
        load_dataset(corpus, WORDPIECE, 64, 0, whole_word_mask=True, tokenizer=trained).train
    )
    assert np.array_equal(plain.nsp_labels, whole.nsp_labels)
    assert not np.array_equal(plain.pred_positions, whole.pred_positions)


# --- the run: cache, checkpoint, resume ----------------------------------------------------


@pytest.mark.slow
def test_run_saves_the_tokenizer_with_the_checkpoint_and_caches_it(run, cli_env):
    state = checkpoint.load(checkpoint.resolve(run))
    assert state["tokenizer"] == {"kind": "wordpiece", "lowercase": True}
    assert len(state["vocab"]) == VOCAB == state["model_config"]["vocab_size"]
    assert state["config"]["tokenizer"]["name"] == "wordpiece"
    cached = list((Path(cli_env["BERTPRETRAIN_DATA"]) / "cache").glob("tokenizer-*.json"))
    assert any(json.loads(p.read_text())["vocab"] == state["vocab"] for p in cached)
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_resume_keeps_the_checkpoints_vocabulary_when_the_cache_is_gone(tmp_path, cli_env):
    """WordPiece training is not reproducible bit for bit: a resume must not retrain."""
    env = cli_env | {"BERTPRETRAIN_DATA": str(tmp_path / "cache")}
    args = [*ARGS, "hydra.run.dir=run", "trainer.save_every=2"]
    first = run_cli(["train", *args, "trainer.max_steps=2"], tmp_path, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "training a wordpiece vocabulary" in first.stdout  # what the resume must not do
    vocab = checkpoint.load(checkpoint.resolve(tmp_path / "run"))["vocab"]
    shutil.rmtree(tmp_path / "cache")
    resumed = run_cli(["train", *args, "trainer.max_steps=3", "trainer.resume=true"], tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "training a wordpiece vocabulary" not in resumed.stdout + resumed.stderr
    state = checkpoint.load(checkpoint.resolve(tmp_path / "run"))
    assert state["step"] == 3 and state["vocab"] == vocab


# --- encode and export ---------------------------------------------------------------------


@pytest.mark.slow
def test_encode_shows_word_pieces_and_finds_a_split_word_by_its_text(run, tmp_path, cli_env):
    enc = Encoder.load(run)
    out = enc.encode("A crane is flying unbelievably")
    assert out.tokens[0] == "<cls>" and out.tokens[-1] == "<sep>"
    assert any(t.startswith("##") for t in out.tokens)  # "unbelievably" is several pieces
    assert out.vectors.shape == (len(out.tokens), 128)
    split = [i for i, w in enumerate(out.words) if w == "unbelievably"]
    assert len(split) > 1
    result = run_cli(
        ["encode", "A crane is flying unbelievably", "--token", "Unbelievably",
         "--checkpoint", str(run), "--format", "json"],
        tmp_path, cli_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["positions"] == split and len(doc["vectors"]) == len(split)


@pytest.mark.slow
def test_crane_gets_another_vector_in_another_context(run):
    enc = Encoder.load(run)
    flying = enc.encode("a crane is flying")
    driver = enc.encode("a crane driver came", "he just left")
    i = flying.words.index("crane")
    j = driver.words.index("crane")
    assert flying.tokens[i] == driver.tokens[j]
    x, y = flying.vectors[i], driver.vectors[j]
    assert float((x - y).abs().max()) > 0.03  # 0.07 for this 3-step run; collapsed: < 1e-3
    assert float(torch.nn.functional.cosine_similarity(x, y, dim=0)) < 0.9999


@pytest.mark.slow
def test_export_tokenizes_raw_text_as_we_do_and_transformers_gives_our_vectors(run, tmp_path):
    hf = pytest.importorskip("transformers", reason="install the dev extra")
    from bertpretrain.hf.export import export

    out = export(run, tmp_path / "hf")
    vocab_txt = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert vocab_txt[:5] == ["[UNK]", "[PAD]", "[MASK]", "[CLS]", "[SEP]"]
    assert any(t.startswith("##") for t in vocab_txt)
    tokenizer = hf.AutoTokenizer.from_pretrained(out)
    enc = Encoder.load(run)
    texts = [
        ("The Café's crane, unbelievably, flew over Zürich!", "It landed (at 3.5 km) near Ōtaki?"),
        ("naïve résumé — CJK 東京 and emoji-free text.", "Second sentence here."),
        ("Valkyria Chronicles III is a tactical role @-@ playing game", "It was released in 2011"),
    ]
    model = hf.BertModel.from_pretrained(out).eval()
    for a, b in texts:
        ours = enc.encode(a, b)
        theirs = tokenizer(a, b, return_tensors="pt")
        assert theirs["input_ids"][0].tolist() == [enc.tokenizer.index[t] for t in ours.tokens]
        assert theirs["token_type_ids"][0].tolist() == ours.segments
        with torch.no_grad():
            hidden = model(**theirs).last_hidden_state[0]
        torch.testing.assert_close(hidden, ours.vectors, atol=1e-5, rtol=0)
