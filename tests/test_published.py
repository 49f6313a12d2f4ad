"""A published BERT, read from a transformers folder, computes what transformers computes,
tokenises as BertTokenizerFast does, exports back unchanged, and trains on.

No published weights can be downloaded here, so the folders are made with transformers
itself: a small randomly initialised BERT saved with `save_pretrained`, and a WordPiece
vocabulary trained on the shared WikiText-2 splits, laid out as bert-base-uncased's is
([PAD] first, [unused*] tokens, then [UNK] [CLS] [SEP] [MASK], then the pieces).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import SHARED_WIKITEXT, one_line_error, run_cli

from bertpretrain.data.corpus import read_split
from bertpretrain.data.tokenizer import train_tokenizer
from bertpretrain.encode import Encoder
from bertpretrain.hf import published
from bertpretrain.hf import vocab as hf_vocab

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

HARD_TEXT = [
    "The café's naïve déjà-vu, (really?) — costs $3.50/kg!",
    "ÉCOLE Normale Supérieure in PARIS",
    "東京は日本の首都です and 北京 too",
    "supercalifragilisticexpialidocious " + "x" * 120,
    "Unknownword zzzqqq @-@ <unk> [UNK] [MASK] tokens",
    "emoji 🙂 and tabs\tand\u00a0nbsp and zero\u200bwidth",
]


def bert_vocab() -> list[str]:
    sentences = [s for p in read_split(SHARED_WIKITEXT / "wiki.valid.tokens") for s in p]
    pieces = train_tokenizer("wordpiece", sentences, 2, 1500, True).vocab[5:]
    unused = [f"[unused{i}]" for i in range(10)]
    return ["[PAD]", *unused, "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]


def make_folder(
    folder: Path, kind: str = "BertForPreTraining", safetensors: bool = True, **config
) -> Path:
    """A transformers BERT folder of `kind`, its weights random (biases and LayerNorms too,
    so a mix-up of any two tensors shows)."""
    vocab = bert_vocab()
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    settings = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    hf_config = transformers.BertConfig(**(settings | config))
    torch.manual_seed(0)
    model = getattr(transformers, kind)(hf_config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if safetensors:
        model.save_pretrained(folder)
    else:  # what older transformers wrote: a pickle, read with weights_only=True
        hf_config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    transformers.BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("published") / "bert")


def hf_batch(folder: Path, pairs: list[tuple[str, str]]):
    tok = transformers.BertTokenizerFast.from_pretrained(folder)
    return tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")


def test_imported_weights_compute_what_transformers_computes(folder):
    hf = transformers.BertForPreTraining.from_pretrained(folder).eval()
    model, tokenizer, _ = published.load(folder)
    model.eval()
    batch = hf_batch(
        folder, [("a crane is flying", "it lands"), ("he drove the crane", "then left")]
    )
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True)
        ours_of = torch.from_numpy(hf_vocab.published_order(tokenizer))
        tokens = ours_of[batch["input_ids"]]
        valid_lens = batch["attention_mask"].sum(1)
        hidden = model.bert(tokens, batch["token_type_ids"], valid_lens)
        mlm = model.mlm_logits(hidden)
        nsp = model.nsp(model.bert.pool(hidden[:, 0]))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], ref.hidden_states[-1][real], atol=1e-5, rtol=0)
    # Our logits are in our vocabulary order: column ours_of[j] is transformers' column j.
    torch.testing.assert_close(
        mlm[real][:, ours_of], ref.prediction_logits[real], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lowercase", [True, False])
def test_tokenisation_gives_bert_tokenizer_fast_ids_on_hard_text(folder, tmp_path, lowercase):
    cased = tmp_path / "cased"
    cased.mkdir()
    (cased / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes())
    (cased / "config.json").write_bytes((folder / "config.json").read_bytes())
    ref = transformers.BertTokenizerFast(vocab=str(cased / "vocab.txt"), do_lower_case=lowercase)
    ref.save_pretrained(cased)
    tokenizer = hf_vocab.read_tokenizer(cased)
    ours_of = hf_vocab.published_order(tokenizer)
    for text in HARD_TEXT:
        expected = ref(text, add_special_tokens=False)["input_ids"]
        assert [i for _, i in tokenizer.split(text)] == ours_of[expected].tolist(), text
        ids, lens = tokenizer.encode_sentences([text, text])  # the corpus path, too
        assert (
            ids.tolist() == 2 * ours_of[expected].tolist() and lens.tolist() == [len(expected)] * 2
        )


def test_import_then_export_gives_the_identical_folder_back(folder, tmp_path, cli_env):
    """Through a checkpoint, as a run started from the folder would export it."""
    from safetensors.torch import load_file

    from bertpretrain.hf import export
    from bertpretrain.training import checkpoint

    model, tokenizer, max_len = published.load(folder)
    path = tmp_path / "step_00000000.pt"
    checkpoint.save(
        {
            "step": 0,
            "model": model.state_dict(),
            "vocab": tokenizer.vocab,
            "tokenizer": tokenizer.settings(),
            "config": {"data": {"max_len": max_len}},
            "model_config": model.config.to_dict(),
        },
        path,
    )
    out = export.export(path, tmp_path / "exported")
    original, exported = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    assert (out / "vocab.txt").read_bytes() == (folder / "vocab.txt").read_bytes()
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["do_lower_case"] is True and settings["cls_token"] == "[CLS]"
    again = transformers.BertTokenizerFast.from_pretrained(out)
    assert (
        again("A crane, flying!")["input_ids"]
        == transformers.BertTokenizerFast.from_pretrained(folder)("A crane, flying!")["input_ids"]
    )


@pytest.mark.parametrize(
    ("kind", "fresh"),
    [("BertForMaskedLM", "the pooler or the NSP head"), ("BertModel", "the MLM transform")],
)
def test_a_model_without_some_heads_gets_fresh_ones_and_says_so(tmp_path, caplog, kind, fresh):
    folder = make_folder(tmp_path / kind, kind)
    caplog.set_level(logging.INFO)
    model, *_ = published.load(folder)
    assert fresh in caplog.text and "start fresh" in caplog.text
    hf = getattr(transformers, kind).from_pretrained(folder)
    embeddings = hf.get_input_embeddings().weight
    ours_of = torch.from_numpy(hf_vocab.published_order(hf_vocab.read_tokenizer(folder)))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight[ours_of], embeddings)


def test_weights_in_pytorch_model_bin_load_as_plain_tensors(folder, tmp_path):
    pickled = make_folder(tmp_path / "bin", safetensors=False)
    assert not (pickled / "model.safetensors").exists()
    ours, _, _ = published.load(pickled)
    reference, _, _ = published.load(folder)  # the same seed, saved as safetensors
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name


def test_folders_that_are_not_a_whole_bert_are_refused_in_one_line(folder, tmp_path):
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    assert "holds a roberta, not a BERT" in one_line_error(lambda: published.load(roberta))

    from safetensors.torch import load_file, save_file

    for damage in ("missing", "unexpected", "vocab"):
        broken = tmp_path / damage
        broken.mkdir()
        for f in folder.iterdir():
            (broken / f.name).write_bytes(f.read_bytes())
        tensors = load_file(str(folder / "model.safetensors"))
        if damage == "missing":
            del tensors["bert.encoder.layer.1.output.dense.weight"]
        elif damage == "unexpected":
            tensors["bert.encoder.layer.2.output.dense.weight"] = torch.zeros(2)
        else:
            with open(broken / "vocab.txt", "a") as f:
                f.write("extra\n")
        save_file(tensors, str(broken / "model.safetensors"))
        message = one_line_error(lambda b=broken: published.load(b))
        expected = {
            "missing": "lacks the weights",
            "unexpected": "not BERT's",
            "vocab": "vocab_size",
        }
        assert expected[damage] in message, message


def test_a_hub_name_offline_and_uncached_names_the_folder_form(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = one_line_error(lambda: published.resolve("bert-base-uncased"))
    assert "init=/path/to/folder" in message


def test_encode_reads_a_published_folder_directly(folder):
    encoder = Encoder.load(folder)
    a = encoder.encode("a crane driver came", "he just left")
    b = encoder.encode("a crane is flying")
    assert a.tokens[0] == "[CLS]" and not torch.equal(a.vectors[2], b.vectors[2])
    assert encoder.max_len == 512 or encoder.max_len <= 128


def losses(output: str) -> list[float]:
    return [float(m) for m in __import__("re").findall(r"step \d+/\d+  mlm ([\d.]+)", output)]


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["d2l", "bert"])
def test_continued_pretraining_from_a_published_folder_trains_and_exports_back(
    folder, tmp_path, cli_env, pairing
):
    args = [
        "train",
        f"init={folder}",
        f"data.dir={SHARED_WIKITEXT}",
        "data.train_split=valid",
        "data.valid_split=null",
        f"data.pairing={pairing}",
        "data.max_len=64",
        "trainer.batch_size=32",
        "trainer.max_steps=40",
        "trainer.log_every=5",
        "optim.lr=2e-3",
        "optim.warmup_steps=0",
        "hydra.run.dir=run",
    ]
    result = run_cli(args, tmp_path, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr  # the log goes to stdout
    assert f"starting from {folder}" in output
    curve = losses(output)
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.5, curve
    exported = run_cli(["export", "run", "exported"], tmp_path, cli_env)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "exported" / "vocab.txt").read_bytes() == (folder / "vocab.txt").read_bytes()
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "exported")
    assert hf.config.num_hidden_layers == 2 and hf.config.vocab_size == len(bert_vocab())


def test_a_model_override_that_contradicts_init_is_refused_in_one_line(
    folder, tmp_path, bertpretrain
):
    line = bertpretrain(["train", f"init={folder}", "model=base"], tmp_path).error_line()
    assert "sets the architecture" in line and "model.num_layers=12" in line
    assert not (tmp_path / "outputs").exists()


def test_encode_cli_on_a_published_folder(folder, tmp_path, bertpretrain):
    result = bertpretrain(["encode", "a crane is flying", "--checkpoint", str(folder)], tmp_path)
    assert result.code == 0, result.err
    assert "[CLS]" in result.out and "(a transformers folder)" in result.out


@pytest.mark.slow
def test_a_run_started_from_init_resumes_and_prepares_with_its_vocabulary(
    folder, tmp_path, cli_env
):
    common = [
        f"init={folder}",
        f"data.dir={SHARED_WIKITEXT}",
        "data.train_split=valid",
        "data.valid_split=null",
        "data.max_len=64",
    ]
    prepared = run_cli(["prepare", *common], tmp_path, cli_env)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert f"vocabulary {len(bert_vocab())}" in prepared.stdout
    train = ["train", *common, "trainer.batch_size=16", "hydra.run.dir=run"]
    first = run_cli([*train, "trainer.max_steps=4"], tmp_path, cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "prepared corpus from cache" in first.stdout  # the store `prepare` made
    again = run_cli([*train, "trainer.max_steps=8", "trainer.resume=true"], tmp_path, cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout and "starting from" not in again.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 8
    ours = ["train", *common[1:], "init=run", "trainer.batch_size=16", "trainer.max_steps=2"]
    from_ours = run_cli([*ours, "hydra.run.dir=run2"], tmp_path, cli_env)  # a run dir of ours
    assert from_ours.returncode == 0, from_ours.stderr[-3000:]
    assert "starting from" in from_ours.stdout and "step_00000008.pt" in from_ours.stdout


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, folder) -> Path:
    """The model and its tokenizer as the installed transformers saves them, nothing written
    by hand: transformers 5 writes tokenizer.json and no vocab.txt."""
    out = tmp_path_factory.mktemp("saved") / "bert"
    transformers.BertForPreTraining.from_pretrained(folder).save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert not (out / "vocab.txt").exists() and (out / "tokenizer.json").is_file()
    return out


def saved_vocab(folder: Path) -> list[str]:
    """The tokens of the folder's tokenizer.json (or vocab.txt), in id order."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def test_a_folder_saved_by_the_installed_transformers_tokenises_as_it_does(saved_folder):
    ref = transformers.AutoTokenizer.from_pretrained(saved_folder)
    tokenizer = hf_vocab.read_tokenizer(saved_folder)
    ours_of = hf_vocab.published_order(tokenizer)
    assert hf_vocab.published_vocab(tokenizer) == saved_vocab(saved_folder)
    for text in HARD_TEXT:
        expected = ref(text, add_special_tokens=False)["input_ids"]
        assert [i for _, i in tokenizer.split(text)] == ours_of[expected].tolist(), text


def test_a_folder_saved_by_the_installed_transformers_encodes_trains_and_exports(
    saved_folder, tmp_path, bertpretrain
):
    encoded = bertpretrain(["encode", "a crane", "--checkpoint", str(saved_folder)], tmp_path)
    assert encoded.code == 0, encoded.err
    trained = bertpretrain(
        [
            "train",
            f"init={saved_folder}",
            f"data.dir={SHARED_WIKITEXT}",
            "data.train_split=valid",
            "data.valid_split=null",
            "trainer.batch_size=16",
            "trainer.max_steps=1",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert trained.code == 0, trained.err[-3000:]
    exported = bertpretrain(["export", "run", "exported"], tmp_path)
    assert exported.code == 0, exported.err
    lines = (tmp_path / "exported" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert lines[:-1] == saved_vocab(saved_folder)
    ref = transformers.AutoTokenizer.from_pretrained(saved_folder)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    for text in HARD_TEXT:
        assert again(text)["input_ids"] == ref(text)["input_ids"], text
