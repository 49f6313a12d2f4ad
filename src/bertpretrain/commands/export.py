"""`bertpretrain export RUN_OR_CHECKPOINT OUT_DIR`: the options and the printing around
`bertpretrain.export.export`."""

from __future__ import annotations

import argparse
import json

from bertpretrain.errors import ArgumentParser
from bertpretrain.hf.export import FILES, export

EPILOG = """\
examples:
  bertpretrain export outputs/latest exported/tiny-bert        # a run dir's newest checkpoint
  bertpretrain export outputs/run/checkpoints/step_00001000.pt exported/step1000
  bertpretrain export outputs/latest exported/tiny-bert --force  # replace a previous export

then, in Python:
  from transformers import AutoTokenizer, BertForPreTraining
  tokenizer = AutoTokenizer.from_pretrained("exported/tiny-bert")
  model = BertForPreTraining.from_pretrained("exported/tiny-bert")

The tokenizer gives our ids for space-separated words and punctuation marks (WikiText
style); it splits tokens with punctuation inside ("@-@", "<unk>"): see
`python -c "import bertpretrain.export as e; help(e)"`.
"""


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bertpretrain export",
        description="Write a checkpoint as a transformers model folder (BertForPreTraining, "
        "safetensors weights, BertTokenizer files).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        metavar="RUN_OR_CHECKPOINT",
        help="a checkpoint file, or a run dir (its newest)",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write; new or empty")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a previous export in OUT_DIR (refused if it holds a file export did not write)",
    )
    parser.add_argument(
        "--encoder-only",
        action="store_true",
        help="write the encoder and pooler only (BertModel), without the MLM and NSP heads",
    )
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    out = export(args.checkpoint, args.out_dir, force=args.force, encoder_only=args.encoder_only)
    # what the folder holds: BertModel, BertForPreTraining or, for a fine-tuned run,
    # BertForSequenceClassification (config.json's architectures)
    model_class = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"wrote {out}: {', '.join(FILES)}")
    print(
        f'load it with transformers.{model_class}.from_pretrained("{out}") and AutoTokenizer '
        "likewise"
    )
