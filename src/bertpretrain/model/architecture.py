"""The architecture's one schema: what makes a BERT, shared by the model and the config.

Free of torch so the CLI can check a config before importing it: `model.BertConfig` is
this class, and `config.ModelConfig` is this class with a name for the YAML.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Our activation names -> F.gelu's `approximate`.
ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}


@dataclass
class BertConfig:
    vocab_size: int
    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 2
    ffn_size: int = 256
    dropout: float = 0.1
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # or "gelu_tanh", the tanh approximation some published BERTs use

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


ARCHITECTURE = tuple(f.name for f in fields(BertConfig) if f.name != "vocab_size")


def architecture_of(config: BertConfig) -> dict:
    """The fields that make a model, its vocabulary aside (that comes from the tokenizer):
    what `init=` and a resume compare."""
    return {name: getattr(config, name) for name in ARCHITECTURE}
