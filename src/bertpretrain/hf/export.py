"""A checkpoint -> a transformers model folder: `bertpretrain export RUN_OR_CHECKPOINT OUT_DIR`.

The folder loads with `transformers.BertForPreTraining.from_pretrained(OUT_DIR)` (a
fine-tuning run's: `BertForSequenceClassification`, with its labels in config.json),
`BertModel.from_pretrained(OUT_DIR)` and `AutoTokenizer.from_pretrained(OUT_DIR)`:

    config.json              model_type bert, architectures ["BertForPreTraining"]
    model.safetensors        float32 weights under transformers' names
    vocab.txt                one token per line, line n = id n
    tokenizer_config.json    BertTokenizer, lower-casing, the settings below
    special_tokens_map.json  [UNK] [PAD] [MASK] [CLS] [SEP]

The weights are a rename (model/bert.py uses transformers' names) except the fused `qkv`
projection, split into query, key and value (its 3H outputs are q, k, v in that order).
The tied MLM decoder is written out as `cls.predictions.decoder.weight` (the word
embeddings) and `cls.predictions.decoder.bias` (= `cls.predictions.bias`).
`BertModel.from_pretrained` on this folder loads every encoder weight and reports the
pretraining heads (`cls.*`) as unexpected, as it does for Google's `bert-base-uncased`;
`--encoder-only` writes the encoder and pooler alone (architectures ["BertModel"]), which
`BertModel` loads without any report.

The tokenizer. Our reserved tokens keep their ids under BERT's names: `<unk>` 0 -> [UNK],
`<pad>` 1 -> [PAD], `<mask>` 2 -> [MASK], `<cls>` 3 -> [CLS], `<sep>` 4 -> [SEP]. The
word-level tokenizer (the default) lower-cases and splits on whitespace; BertTokenizer lower-cases, splits on
whitespace *and punctuation*, then WordPiece-splits each word. The settings here keep
what can be kept: accents are not stripped (`strip_accents: false`, so "māori" stays one
word), CJK characters are not split apart (`tokenize_chinese_chars: false`), and as our
vocabulary has no `##` pieces, a word outside it becomes one [UNK], as ours does. So the
ids are ours, `[CLS] a [SEP] b [SEP]` with token_type_ids equal to our segments, for text
whose tokens are space-separated words of letters and digits, or single punctuation marks:
WikiText-style text. They differ for
  - a token with punctuation inside or at its edge ("@-@", "'s", "h.", "<unk>"): BERT
    splits it ("@", "-", "@"), ours looks it up whole. WikiText's literal `<unk>` is the
    common case: replace it with `[UNK]` before tokenising (`text.replace("<unk>", "[UNK]")`)
    and BERT gives id 0 as we do;
  - a vocabulary word starting with "##" (BERT reads it as a word continuation), a word of
    over 100 characters (BERT: [UNK]) and control characters (BERT drops them; we split on
    the few that Python counts as whitespace);
  - the texts "[CLS]", "[MASK]", ...: special tokens to BertTokenizer, unknown words to us.
A WordPiece checkpoint (`tokenizer=wordpiece`) already tokenises as BERT does, so its
folder keeps BertTokenizer's defaults (accents stripped when lower-casing, CJK characters
split) and `vocab.txt` carries the `##` pieces: the ids are ours on any text, except the
literal texts `<unk> <pad> <mask> <cls> <sep>` (special tokens to us, plain text to BERT)
and `[UNK]`, `[CLS]`, ... (the other way round).
`model_max_length` is the training `data.max_len`: positions past it were never trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from bertpretrain import files
from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.data.vocab import PAD_ID, RESERVED
from bertpretrain.errors import UserError
from bertpretrain.hf.published import VOCAB_ROWS, hf_names
from bertpretrain.hf.vocab import (
    SPECIAL_DEFAULTS,
    SPECIAL_KEYS,
    published_order,
    published_vocab,
)
from bertpretrain.load import find_model, load_model
from bertpretrain.model.bert import BertConfig

MARKER = ".bertpretrain-export"  # what --force looks for before it replaces a folder
FILES = [
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
]


def export(
    source: str | Path, out_dir: str | Path, *, force: bool = False, encoder_only: bool = False
) -> Path:
    """Write the model at `source` (a checkpoint file, a run dir's newest checkpoint, or a
    transformers folder) as a transformers folder.

    `out_dir` must be new or empty; `force=True` replaces a previous export there. The
    folder appears whole or not at all: it is written next to `out_dir`, then renamed.
    """
    path = find_model(source)
    out = Path(out_dir).expanduser().absolute()
    _check_target(out, path, force)  # before the model is read: mistakes fail fast
    save_file = _safetensors_writer()
    loaded = load_model(path)
    tokenizer = loaded.tokenizer
    tensors = hf_weights(loaded.model.state_dict(), tokenizer)
    head = task_config(loaded.task) if loaded.task is not None and not encoder_only else {}
    if encoder_only:  # keys without the `bert.` prefix, as BertModel.save_pretrained writes
        tensors = {k[5:]: t for k, t in tensors.items() if k.startswith("bert.")}
    texts = {
        "config.json": _json(hf_config(loaded.model.config, encoder_only, tokenizer) | head),
        "vocab.txt": "".join(f"{token}\n" for token in vocab_lines(tokenizer)),
        "tokenizer_config.json": _json(tokenizer_config(loaded.max_len, tokenizer)),
        "special_tokens_map.json": _json(special_tokens_map(tokenizer)),
    }

    def write(folder: Path) -> None:
        weights_file = folder / "model.safetensors"
        save_file(tensors, str(weights_file), metadata={"format": "pt"})
        os.chmod(weights_file, folder.stat().st_mode & 0o666)  # safetensors writes it 0600
        for name, text in texts.items():
            (folder / name).write_text(text, encoding="utf-8")
        (folder / MARKER).write_text(f"exported from {path}\n", encoding="utf-8")
        for name in FILES:
            _fsync(folder / name)

    _publish(out, write)
    return out


def hf_config(
    config: BertConfig, encoder_only: bool = False, tokenizer: Tokenizer | None = None
) -> dict:
    """transformers' BertConfig fields for our config."""
    published = tokenizer.published if tokenizer is not None else None
    return {
        "architectures": ["BertModel" if encoder_only else "BertForPreTraining"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_size,
        # the exact erf GELU, as F.gelu, or its tanh approximation, as published
        "hidden_act": "gelu" if config.hidden_act == "gelu" else "gelu_pytorch_tanh",
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "max_position_embeddings": config.max_position,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": 0.02,
        "pad_token_id": published["ids"][PAD_ID] if published else PAD_ID,
        "tie_word_embeddings": True,
    }


def task_config(task: dict) -> dict:
    """What a fine-tuned run's config.json adds: BertForSequenceClassification, its labels
    and its problem type (a regression has one output and no labels)."""
    labels = task["label_names"] or []
    return {
        "architectures": ["BertForSequenceClassification"],
        "num_labels": max(1, len(labels)),
        "problem_type": "regression" if not labels else "single_label_classification",
        "id2label": {str(i): name for i, name in enumerate(labels)} or {"0": "LABEL_0"},
        "label2id": {name: i for i, name in enumerate(labels)} or {"LABEL_0": 0},
        "finetuning_task": task["name"],
    }


def tokenizer_config(max_len: int, tokenizer: Tokenizer) -> dict:
    """BertTokenizer settings that give our ids (module docstring). A WordPiece tokenizer
    is BERT's own pipeline, so BERT's defaults, or a published vocabulary's own settings;
    a word-level one keeps what can be kept."""
    wordpiece = tokenizer.kind == "wordpiece"
    published = tokenizer.published or {}
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": tokenizer.lowercase,
        "strip_accents": published.get("strip_accents") if wordpiece else False,
        "tokenize_chinese_chars": published.get("chinese_chars", True) if wordpiece else False,
        "model_max_length": max_len,
        **special_tokens_map(tokenizer),
    }


def special_tokens_map(tokenizer: Tokenizer) -> dict:
    """Our reserved tokens (ids 0..4) under BERT's names, or a published vocabulary's own."""
    names = tokenizer.published["names"] if tokenizer.published else SPECIAL_DEFAULTS
    return dict(zip(SPECIAL_KEYS, names))


def vocab_lines(tokenizer: Tokenizer) -> list[str]:
    """vocab.txt, line n = id n: a published vocabulary in its own order and names; ours
    with the reserved tokens under BERT's names."""
    if tokenizer.published:
        return published_vocab(tokenizer)
    return SPECIAL_DEFAULTS + tokenizer.vocab[len(RESERVED) :]


def hf_weights(ours: dict[str, torch.Tensor], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """Our BertForPretraining state dict under transformers' BertForPreTraining names, the
    vocabulary rows in vocab.txt's order (a published vocabulary's own; ours as it is).

    Every tensor is a float32 copy of its own (safetensors refuses shared storage).
    """
    order = published_order(tokenizer) if tokenizer.published else None
    out: dict[str, torch.Tensor] = {}
    for name, tensor in ours.items():
        value = tensor.detach().to("cpu", torch.float32)
        if order is not None and name in VOCAB_ROWS:
            value = value[torch.from_numpy(order)]
        names = hf_names(name)
        for hf_name, piece in zip(names, value.chunk(len(names))):  # qkv: query, key, value
            out[hf_name] = piece.clone()
    if "cls.predictions.bias" in out:  # pretraining's tied decoder, written out
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
        out["cls.predictions.decoder.weight"] = out[
            "bert.embeddings.word_embeddings.weight"
        ].clone()
    return out


def _safetensors_writer():
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError(
            "export writes model.safetensors and needs the safetensors package; "
            "install it with `pip install safetensors` (or the export extra, bertpretrain[export])"
        ) from None
    return save_file


def _write_errors() -> type[Exception]:
    """What safetensors raises when a write fails (a full disk included)."""
    from safetensors import SafetensorError

    return SafetensorError


def _check_target(out: Path, source: Path, force: bool) -> None:
    """Refuse anything that could lose a file, before any work is done."""
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT_DIR {out} is a file; give a folder that is new or empty")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(
            f"OUT_DIR {out} is not empty; give a new or empty folder, or pass --force to "
            "replace a previous export there"
        )
    if not (out / MARKER).is_file():
        raise UserError(
            f"OUT_DIR {out} is not an export of ours (it has no {MARKER} file), and --force "
            "replaces only a folder that `bertpretrain export` wrote; give another OUT_DIR"
        )
    foreign = sorted(p.name for p in out.iterdir() if p.name not in {*FILES, MARKER})
    if foreign:
        raise UserError(
            f"OUT_DIR {out} holds {foreign[0]!r}, which `bertpretrain export` did not write "
            f"and --force would delete{f' (and {len(foreign) - 1} more)' if foreign[1:] else ''}; "
            "move it out of OUT_DIR, or give another OUT_DIR"
        )
    if out.resolve() in source.resolve().parents:
        raise UserError(
            f"the checkpoint {source} lies inside OUT_DIR {out}, which --force would replace; "
            "give another OUT_DIR"
        )


def _publish(out: Path, write: Callable[[Path], None]) -> None:
    """Write into a fresh folder next to `out`, then put it in place of `out`; a previous
    export (checked by `_check_target`) is removed only once the new one is in."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with files.temp_folder(out) as tmp:
            write(tmp)
            files.replace_folder(tmp, out)
    except (OSError, _write_errors()) as e:
        reason = files.failure(e, out.parent)
        fix = "free space or give" if reason == files.DISK_FULL else "give"
        raise UserError(
            f"could not write the export to {out}: {reason}; {fix} a writable OUT_DIR "
            "(nothing there was changed)"
        ) from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
