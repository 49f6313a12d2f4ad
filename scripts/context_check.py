"""How much a run's vectors depend on the context: the reference's "crane" comparison.

    python scripts/context_check.py outputs/multirun/2026-12-02/18-00-00/* [--json]

For each run dir (or checkpoint) it prints the run's overrides, its validation MLM loss
and token spread (from summary.json), and the two vectors of "crane" in d2l's sentences,
"a crane is flying" against the pair "a crane driver came" / "he just left": their cosine
similarity and their largest coordinate difference. A collapsed encoder gives a cosine of
1.0000 and a difference near 0; that is what issue #19's default recipe must avoid.

    python scripts/context_check.py RUN --layers

shows where a collapse happens: for each block, the norm of the residual stream and of
the attention and FFN outputs added to it, and each one's spread over the tokens of a
WikiText sentence (docs/defaults.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SENTENCE = "a crane is flying"
PAIR = ("a crane driver came", "he just left")
WORD = "crane"


def crane_figures(run: Path) -> dict:
    from bertpretrain.encode import Encoder

    enc = Encoder.load(run)
    one, two = enc.encode(SENTENCE), enc.encode(*PAIR)
    x, y = (e.vectors[e.words.index(WORD)] for e in (one, two))  # (H,) each
    return {
        "crane_token": one.tokens[one.words.index(WORD)],
        "crane_cosine": float(torch.nn.functional.cosine_similarity(x, y, dim=0)),
        "crane_max_diff": float((x - y).abs().max()),
    }


LAYERS_TEXT = (
    "the game began development in 2010 , carrying over a large portion of the work "
    "done on valkyria chronicles ii"
)


def layer_figures(run: Path) -> list[str]:
    """Per block: mean norm and token spread of the residual and of each branch."""
    from bertpretrain.encode import Encoder
    from bertpretrain.model.attention import pack

    enc = Encoder.load(run)
    model = enc.model
    ids = enc.encode(LAYERS_TEXT).tokens
    tokens = torch.tensor([[enc.tokenizer.vocab.index(t) for t in ids]])
    packing = pack(torch.tensor([len(ids)]), len(ids))

    def stats(name: str, t: torch.Tensor) -> str:  # t: (T, H)
        return f"{name} norm {t.norm(dim=1).mean():.1f} spread {t.std(0).mean():.3f}"

    lines = []
    with torch.no_grad():
        x = model.embeddings(tokens, torch.zeros_like(tokens), packing)
        lines.append(stats("embeddings", x))
        for i, layer in enumerate(model.layer):
            a = layer.attention_output(layer.attention(layer.qkv(x), packing))
            h = layer.attention_LayerNorm(x + a)
            f = layer.output(torch.nn.functional.gelu(layer.intermediate(h)))
            x = layer.output_LayerNorm(h + f)
            lines.append(
                f"block {i}: {stats('attention', a)} | {stats('ffn', f)} | {stats('out', x)}"
            )
    return lines


def overrides(run: Path) -> str:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return str(run)
    items = [ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("- ")]
    return " ".join(i for i in items if not i.startswith(("data.", "hydra."))) or "(defaults)"


def row(run: Path) -> dict:
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "run": str(run),
        "overrides": overrides(run),
        "val_mlm_loss": summary.get("val_mlm_loss", float("nan")),
        "val_nsp_loss": summary.get("val_nsp_loss", float("nan")),
        "val_token_spread": summary.get("val_token_spread", float("nan")),
        **crane_figures(run),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run dirs or checkpoints")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    parser.add_argument("--layers", action="store_true", help="per-block norms and spreads")
    args = parser.parse_args()
    if args.layers:
        for run in args.runs:
            print(run, *layer_figures(run), sep="\n  ")
        return
    rows = [row(r) for r in args.runs]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| overrides | val MLM | val NSP | token spread | crane cosine | crane max diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['overrides']} | {r['val_mlm_loss']:.3f} | {r['val_nsp_loss']:.3f} | "
            f"{r['val_token_spread']:.3g} | {r['crane_cosine']:.4f} | {r['crane_max_diff']:.3f} |"
        )


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a script for people: the reason, not a traceback
        sys.exit(f"context_check: {e}")
