"""`bertpretrain export`: a checkpoint becomes a folder transformers loads and runs as we do.

The checkpoint is built here in a second (a small model with noise on every weight, bias
and LayerNorm, so a mis-mapped tensor shows), not trained: export only renames weights.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_wikitext, one_line_error

from bertpretrain.data.vocab import PAD_ID, UNK_ID, token_index
from bertpretrain.encode import Encoder
from bertpretrain.errors import UserError
from bertpretrain.hf.export import FILES, MARKER, export
from bertpretrain.model.bert import BertConfig, BertForPretraining
from bertpretrain.training import checkpoint

MAX_LEN = 64
ATOL = 1e-5
NEEDS_TRANSFORMERS = (
    "transformers checks the export: install the dev extra, pip install -e '.[dev]'"
)
# A token our whitespace split and BERT's punctuation split agree on: a word of letters and
# digits, or one punctuation mark (the export module's docstring has the rule).
WORDLIKE = re.compile(r"[^\W_]+|[^\w\s]")


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers", reason=NEEDS_TRANSFORMERS)


@pytest.fixture(scope="module")
def dataset(wikitext_dir):
    return build_wikitext(wikitext_dir / "wiki.valid.tokens", None, MAX_LEN, 5, 0)


@pytest.fixture(scope="module")
def ours(dataset) -> BertForPretraining:
    config = BertConfig(
        vocab_size=len(dataset.vocab),
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        ffn_size=64,
        max_position=80,  # more rows than max_len: the config must take the model's
    )
    model = BertForPretraining(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # LayerNorm weights stay near 1, all else near 0
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset, ours) -> Path:
    """A run dir holding one checkpoint with the keys the trainer writes."""
    run = tmp_path_factory.mktemp("run")
    state = {
        "step": 3,
        "model": ours.state_dict(),
        "vocab": dataset.vocab,
        "config": {"data": {"max_len": MAX_LEN}, "model": ours.config.to_dict()},
        "model_config": ours.config.to_dict(),
    }
    checkpoint.save(state, checkpoint.path_for(run, 3))
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run_dir) -> Path:
    pytest.importorskip("safetensors", reason=NEEDS_TRANSFORMERS)
    return export(run_dir, tmp_path_factory.mktemp("exports") / "bert")


@contextmanager
def no_warnings():
    """Fail on any warning: transformers reports missing/unexpected weights as one."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] + [str(w.message) for w in caught] == []


def real_batch(dataset, n: int = 16):
    """The first n examples of the WikiText valid split: tokens, segments and lengths."""
    batch = dataset.train.batch(np.arange(n))
    tokens, segments, valid_lens = batch["tokens"], batch["segments"], batch["valid_lens"]
    real = torch.arange(tokens.shape[1]) < valid_lens[:, None]  # (B, L)
    assert len(set(valid_lens.tolist())) > 1  # padding is exercised
    return tokens, segments, valid_lens, real


# --- the folder ----------------------------------------------------------------------------


def test_cli_writes_the_same_folder_as_the_api(run_dir, exported, tmp_path, bertpretrain):
    out = tmp_path / "cli"
    result = bertpretrain(["export", str(run_dir), str(out)], tmp_path)
    assert result.code == 0, result.err[-2000:]
    assert f"wrote {out}" in result.out
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, MARKER])
    for name in FILES:
        assert (out / name).read_bytes() == (exported / name).read_bytes(), name


def test_vocab_keeps_our_ids_under_berts_special_names(exported, dataset):
    lines = (exported / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(dataset.vocab)
    assert lines[:5] == ["[UNK]", "[PAD]", "[MASK]", "[CLS]", "[SEP]"]
    assert lines[5:-1] == dataset.vocab[5:]


def test_config_describes_our_model(hf, exported, ours):
    config = hf.AutoConfig.from_pretrained(exported)
    c = ours.config
    assert (config.model_type, config.architectures) == ("bert", ["BertForPreTraining"])
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (
        c.vocab_size,
        c.hidden_size,
        c.ffn_size,
    )
    assert (config.num_hidden_layers, config.num_attention_heads) == (c.num_layers, c.num_heads)
    assert config.max_position_embeddings == c.max_position == 80
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == c.dropout
    assert (config.hidden_act, config.layer_norm_eps, config.type_vocab_size) == ("gelu", 1e-12, 2)
    assert config.pad_token_id == PAD_ID


def test_pretraining_model_loads_without_missing_or_unexpected_weights(hf, exported):
    with no_warnings():
        _, info = hf.BertForPreTraining.from_pretrained(exported, output_loading_info=True)
    assert not any(info.values()), info


def test_encoder_loads_every_weight_and_leaves_only_the_heads(hf, exported):
    """As for Google's bert-base-uncased: BertModel reports the pretraining heads as unused."""
    _, info = hf.BertModel.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert info["unexpected_keys"] and all(k.startswith("cls.") for k in info["unexpected_keys"])


def test_encoder_only_export_loads_into_bert_model_without_warnings(
    hf, run_dir, ours, dataset, tmp_path
):
    out = export(run_dir, tmp_path / "encoder", encoder_only=True)
    with no_warnings():
        model, info = hf.BertModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    tokens, segments, valid_lens, real = real_batch(dataset)
    with torch.no_grad():
        theirs = model(input_ids=tokens, token_type_ids=segments, attention_mask=real.long())
        hidden = ours.bert(tokens, segments, valid_lens)
    torch.testing.assert_close(theirs.last_hidden_state[real], hidden[real], atol=ATOL, rtol=0)


# --- same numbers --------------------------------------------------------------------------


def test_transformers_gives_our_hidden_states_mlm_and_nsp_logits(hf, exported, ours, dataset):
    tokens, segments, valid_lens, real = real_batch(dataset)
    pretraining = hf.BertForPreTraining.from_pretrained(exported).eval()
    encoder = hf.BertModel.from_pretrained(exported).eval()
    with torch.no_grad():
        kwargs = {"input_ids": tokens, "token_type_ids": segments, "attention_mask": real.long()}
        theirs = pretraining(**kwargs, output_hidden_states=True)
        base = encoder(**kwargs)
        hidden = ours.bert(tokens, segments, valid_lens)  # (B, L, H)
        pooled = ours.bert.pool(hidden[:, 0])
        mlm = ours.mlm_logits(hidden)  # (B, L, V): every position
        nsp = ours.nsp(pooled)

    def close(a, b):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)

    close(theirs.hidden_states[-1][real], hidden[real])
    close(base.last_hidden_state[real], hidden[real])
    close(base.pooler_output, pooled)
    close(theirs.prediction_logits[real], mlm[real])
    close(theirs.seq_relationship_logits, nsp)
    assert nsp.std(0).min() > 1e-3  # the logits depend on the input: the check means something


# --- the tokenizer -------------------------------------------------------------------------


def wikitext_inputs(path: Path) -> tuple[list[tuple[str, ...]], str]:
    """Sentence pairs (original case) whose tokens are all word-like, a sentence with
    "Māori" (an accent BERT would strip by default), and one with WikiText's literal <unk>."""
    pairs, maori, unk = [], None, None
    for line in path.read_text(encoding="utf-8").split("\n"):
        sentences = line.strip().split(" . ")
        if len(sentences) < 2:
            continue
        for a, b in zip(sentences, sentences[1:]):
            words = f"{a} {b}".split()
            if a.split() and b.split() and len(words) + 3 <= MAX_LEN:
                if all(WORDLIKE.fullmatch(w) for w in words):
                    pairs.append((a, b))
                    if maori is None and "Māori" in words:
                        maori = (a, b)
                elif unk is None and all(w == "<unk>" or WORDLIKE.fullmatch(w) for w in words):
                    unk = (a, b)
    assert len(pairs) > 100 and maori and unk
    return [*pairs[::40], maori], unk


def test_tokenizer_gives_our_ids_and_segments_on_wikitext(hf, exported, run_dir, wikitext_dir):
    tokenizer = hf.AutoTokenizer.from_pretrained(exported)
    encoder = Encoder.load(run_dir)
    index = token_index(encoder.vocab)
    inputs, unk = wikitext_inputs(wikitext_dir / "wiki.valid.tokens")
    saw_unknown = False
    for a, b in inputs:
        ours = encoder.encode(a, b)
        ids = [index[t] for t in ours.tokens]
        theirs = tokenizer(a, b)
        assert theirs["input_ids"] == ids, (a, b)
        assert theirs["token_type_ids"] == ours.segments
        saw_unknown |= UNK_ID in ids[1:-1]  # a word outside the vocabulary is one [UNK]
    assert saw_unknown
    # WikiText's literal <unk> is split by BERT; written as [UNK] it is our id 0 again.
    ours = encoder.encode(*unk)
    theirs = tokenizer(*(s.replace("<unk>", "[UNK]") for s in unk))
    assert theirs["input_ids"] == [index[t] for t in ours.tokens]
    assert tokenizer.model_max_length == MAX_LEN
    special = [tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id]
    assert special + [tokenizer.cls_token_id, tokenizer.sep_token_id] == [0, 1, 2, 3, 4]


def test_text_gives_our_vectors_through_transformers(hf, exported, run_dir, wikitext_dir):
    """End to end: text -> AutoTokenizer -> BertModel equals text -> our Encoder."""
    tokenizer = hf.AutoTokenizer.from_pretrained(exported)
    model = hf.BertModel.from_pretrained(exported).eval()
    encoder = Encoder.load(run_dir)
    pairs = wikitext_inputs(wikitext_dir / "wiki.valid.tokens")[0][:6]
    batch = tokenizer(
        [a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = model(**batch).last_hidden_state  # (B, L, H)
    for row, e in enumerate(encoder.encode_batch(pairs)):
        n = len(e.tokens)
        assert batch["attention_mask"][row].sum() == n
        torch.testing.assert_close(theirs[row, :n], e.vectors, atol=ATOL, rtol=0)


# --- refusals ------------------------------------------------------------------------------


def test_refuses_a_non_empty_out_dir_and_leaves_it_alone(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--force"):
        export(run_dir, out)
    (out / "config.json").write_text("{}")  # looks like a model folder, but not our export
    with pytest.raises(UserError, match="not an export of ours"):
        export(run_dir, out, force=True)  # --force replaces only a previous export
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind


def test_force_replaces_a_previous_export_whole(run_dir, tmp_path):
    pytest.importorskip("safetensors", reason=NEEDS_TRANSFORMERS)
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    export(run_dir, out)
    with pytest.raises(UserError, match="--force"):
        export(run_dir, out)
    (out / "config.json").write_text("{}")  # ours, even when edited
    export(run_dir, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, MARKER])
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("added", ["notes.txt", "tokenizer.json", "eval/results.json"])
def test_force_refuses_naming_a_file_it_did_not_write_and_deletes_nothing(run_dir, tmp_path, added):
    pytest.importorskip("safetensors", reason=NEEDS_TRANSFORMERS)
    out = tmp_path / "out"
    export(run_dir, out)
    (out / added).parent.mkdir(exist_ok=True)
    (out / added).write_text("the user's own")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    message = one_line_error(lambda: export(run_dir, out, force=True))
    assert repr(added.split("/")[0]) in message and "did not write" in message, message
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / added).read_text() == "the user's own"


def test_bad_checkpoint_path_exits_2_with_one_line(tmp_path, bertpretrain):
    line = bertpretrain(["export", "missing.pt", "out"], tmp_path).error_line()
    assert "missing.pt does not exist" in line
    assert not (tmp_path / "out").exists()


def test_foreign_weights_are_a_user_error(run_dir, tmp_path):
    state = checkpoint.load(checkpoint.resolve(run_dir))
    del state["model"]["nsp.bias"]
    bad = tmp_path / "bad.pt"
    checkpoint.save(state, bad)
    with pytest.raises(UserError, match="no usable model.*nsp.bias"):
        export(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_safetensors_says_how_to_install_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(UserError, match="pip install safetensors"):
        export(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
