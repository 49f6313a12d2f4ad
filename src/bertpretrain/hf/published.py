"""Published BERTs in the `transformers` format: read a model folder, and the names export
writes under.

A folder as `save_pretrained` writes it (`config.json`, `model.safetensors` or
`pytorch_model.bin`, `vocab.txt`, `tokenizer_config.json`) becomes our model and tokenizer:

- the architecture comes from `config.json` (layers, hidden size, heads, FFN, positions,
  type vocabulary, LayerNorm eps, activation); anything that is not BERT is refused;
- the tokenizer is the folder's WordPiece `vocab.txt` with its normaliser settings, its
  special tokens moved to our ids 0..4 (hf/vocab.py). The word embeddings and the
  MLM bias are permuted the same way here and back on export, so the model computes
  exactly what it computes in `transformers`, and export writes the very vocab.txt back;
- the weights are read from safetensors, or from a `.bin` with `weights_only=True` (never
  plain pickle, which runs code). `BertForPreTraining` loads whole; `BertForMaskedLM`
  has no NSP head and no pooler, `BertModel` no MLM transform: those start fresh, and the
  log says so. Any other missing or unexpected weight is an error.

Names: ours follow transformers' except the fused `qkv` (query, key and value stacked in
that order) and the tied decoder, which is the word embeddings plus `mlm_bias`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from bertpretrain.data.tokenizer import Tokenizer
from bertpretrain.errors import UserError
from bertpretrain.hf.vocab import published_order, read_tokenizer, tokenizer_settings
from bertpretrain.model.bert import BertConfig, BertForPretraining

log = logging.getLogger(__name__)

# Inside `bert.layer.N` (ours) / `bert.encoder.layer.N` (transformers').
LAYER = {
    "attention_output": "attention.output.dense",
    "attention_LayerNorm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_LayerNorm": "output.LayerNorm",
}
TOP = {
    "bert.pooler": "bert.pooler.dense",
    "mlm_dense": "cls.predictions.transform.dense",
    "mlm_LayerNorm": "cls.predictions.transform.LayerNorm",
    "nsp": "cls.seq_relationship",
    "classifier": "classifier",  # a fine-tuned run's head: BertForSequenceClassification's
}
QKV = ("query", "key", "value")
VOCAB_ROWS = ("bert.embeddings.word_embeddings.weight", "mlm_bias")  # indexed by token id
# transformers' hidden_act -> ours
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# Weights a checkpoint may hold that the model does not use: the decoder is tied to the
# word embeddings (its bias is `cls.predictions.bias`), older transformers saved
# position_ids buffers, and a fine-tuned BertForSequenceClassification (ours exported, or
# the Hub's) has a task's head, which `init=` and `encode` do not use.
IGNORED = {
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "bert.embeddings.position_ids",
    "classifier.weight",
    "classifier.bias",
}
# Parts a published model may lack, which then start fresh: what each means to a user.
OPTIONAL = {
    "bert.pooler": "the pooler",
    "nsp": "the NSP head",
    "mlm_dense": "the MLM transform",
    "mlm_LayerNorm": "the MLM transform",
    "mlm_bias": "the MLM bias",
}


def hf_names(ours: str) -> list[str]:
    """transformers' name(s) of one of our weights (three for a fused `qkv`)."""
    if ours == "mlm_bias":
        return ["cls.predictions.bias"]
    module, _, kind = ours.rpartition(".")
    parts = module.split(".")
    if module.startswith("bert.embeddings."):
        return [ours]
    if module.startswith("bert.layer.") and len(parts) == 4:
        prefix = f"bert.encoder.layer.{parts[2]}."
        if parts[3] == "qkv":
            return [f"{prefix}attention.self.{piece}.{kind}" for piece in QKV]
        return [f"{prefix}{LAYER[parts[3]]}.{kind}"]
    return [f"{TOP[module]}.{kind}"]


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve(source: str) -> Path:
    """A transformers folder: `source` itself, or a Hub name (`bert-base-uncased`) found in
    (or, when online, downloaded into) the local Hugging Face cache."""
    path = Path(source).expanduser()
    if os.path.lexists(path) or source.startswith(("/", ".", "~")):  # a dangling link too
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"init={source} is not a folder, and a Hub name needs huggingface_hub "
            "(pip install huggingface_hub); or give init=/path/to/folder"
        ) from None
    patterns = ["config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"]
    patterns += ["special_tokens_map.json"]
    patterns += ["model.safetensors"]  # not also the same weights as pytorch_model.bin
    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as e:  # offline, unknown name, no permission: huggingface_hub's many types
        reason = " ".join(str(e).split())[:200]
        raise UserError(
            f"init={source} is neither a folder nor a model in the local Hugging Face cache, "
            f"and it could not be downloaded ({type(e).__name__}: {reason}); download it where "
            "there is a network and give init=/path/to/folder"
        ) from None


def read_config(folder: Path) -> BertConfig:
    """Our BertConfig from a transformers `config.json`; not BERT is a UserError."""
    try:
        settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {folder / 'config.json'}: {e}") from None
    kind = settings.get("model_type")
    if kind != "bert":
        raise UserError(
            f"{folder} holds a {kind or 'model without a model_type'}, not a BERT (model_type "
            "bert): RoBERTa, DistilBERT and ALBERT differ in their layers or tokenizer; give a "
            "BERT folder"
        )
    act = settings.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise UserError(
            f"{folder}: hidden_act {act!r} is not supported (only {', '.join(ACTIVATIONS)})"
        )
    if settings.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(
            f"{folder}: position_embedding_type {settings['position_embedding_type']!r} is not "
            "supported (only absolute positions, as in BERT)"
        )
    try:
        return BertConfig(
            vocab_size=int(settings["vocab_size"]),
            num_layers=int(settings["num_hidden_layers"]),
            hidden_size=int(settings["hidden_size"]),
            num_heads=int(settings["num_attention_heads"]),
            ffn_size=int(settings["intermediate_size"]),
            dropout=float(settings.get("hidden_dropout_prob", 0.1)),
            max_position=int(settings.get("max_position_embeddings", 512)),
            type_vocab_size=int(settings.get("type_vocab_size", 2)),
            layer_norm_eps=float(settings.get("layer_norm_eps", 1e-12)),
            hidden_act=ACTIVATIONS[act],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder / 'config.json'} lacks a BERT setting ({e})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights under transformers' BertForPreTraining names (a BertModel's
    keys gain the `bert.` prefix; TF-era `gamma`/`beta` become `weight`/`bias`)."""
    safetensors, pickled = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(safetensors))
    elif pickled.is_file():
        try:
            tensors = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as e:  # an unsafe or damaged pickle: torch's various errors
            raise UserError(
                f"{pickled} cannot be read as plain weights ({type(e).__name__}); convert it "
                "to model.safetensors"
            ) from None
    else:
        sharded = sorted(p.name for p in folder.glob("*.index.json"))
        hint = f" (sharded weights, {sharded[0]}, are not supported)" if sharded else ""
        raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin{hint}")
    if "cls.predictions.decoder.bias" in tensors:  # safetensors keeps one of two tied names
        tensors.setdefault("cls.predictions.bias", tensors["cls.predictions.decoder.bias"])
    bare = "embeddings.word_embeddings.weight" in tensors  # saved by BertModel
    out = {}
    for name, tensor in tensors.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        if bare and not name.startswith("cls."):
            name = f"bert.{name}"
        out[name] = tensor
    return out


def load(folder: Path) -> tuple[BertForPretraining, Tokenizer, int]:
    """Our model and tokenizer of a transformers BERT folder, and the longest input it was
    trained for (its tokenizer's model_max_length, else its position table)."""
    config = read_config(folder)
    tokenizer = read_tokenizer(folder)
    if len(tokenizer.vocab) != config.vocab_size:
        raise UserError(
            f"{folder}: the vocabulary has {len(tokenizer.vocab)} tokens but config.json says "
            f"vocab_size {config.vocab_size}; the folder's files do not belong together"
        )
    model = BertForPretraining(config)
    model.load_state_dict(_our_weights(read_weights(folder), model.state_dict(), tokenizer, folder))
    return model, tokenizer, trained_len(folder, config)


def trained_len(folder: Path, config: BertConfig) -> int:
    """The longest input the folder's model was trained for: its tokenizer's
    model_max_length, else its position table."""
    limit = tokenizer_settings(folder).get("model_max_length")
    fits = isinstance(limit, int) and 5 <= limit <= config.max_position
    return limit if fits else config.max_position


def _our_weights(
    tensors: dict[str, torch.Tensor],
    fresh: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    folder: Path,
) -> dict[str, torch.Tensor]:
    """`fresh` (a new model's state dict) with every weight the folder has, permuted into
    our vocabulary order; the parts it lacks stay fresh, with a log line."""
    ours_of = published_order(tokenizer)
    to_published = np.argsort(ours_of)  # for each of our ids, its line in vocab.txt
    state, used, fresh_parts, missing = {}, set(), [], []
    for name, tensor in fresh.items():
        names = hf_names(name)
        if not all(n in tensors for n in names):
            part = OPTIONAL.get(name.rpartition(".")[0] if name != "mlm_bias" else name)
            if part is None:
                missing.append(names[0])
            elif part not in fresh_parts:
                fresh_parts.append(part)
            state[name] = tensor
            continue
        value = torch.cat([tensors[n] for n in names]) if len(names) > 1 else tensors[names[0]]
        if name in VOCAB_ROWS:
            if value.shape[0] != len(to_published):
                missing.append(f"{names[0]} with {len(to_published)} rows")
                continue
            value = value[torch.from_numpy(to_published)]
        if value.shape != tensor.shape:
            raise UserError(
                f"{folder}: {names[0]} has shape {tuple(value.shape)}, config.json implies "
                f"{tuple(tensor.shape)}; the folder's files do not belong together"
            )
        state[name] = value.to(tensor.dtype)
        used.update(names)
    if missing:
        raise UserError(
            f"{folder} lacks the weights {', '.join(missing[:4])}; give a whole BERT folder"
        )
    unexpected = sorted(set(tensors) - used - IGNORED)
    if unexpected:
        raise UserError(
            f"{folder} holds weights that are not BERT's ({', '.join(unexpected[:4])}); "
            "give a BertForPreTraining, BertForMaskedLM or BertModel folder"
        )
    if fresh_parts:
        log.info(
            "%s has no %s: %s start fresh",
            folder,
            " or ".join(fresh_parts),
            "they" if len(fresh_parts) > 1 else "it",
        )
    return state
