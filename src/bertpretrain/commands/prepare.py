"""`bertpretrain prepare OVERRIDES`: the corpus and vocabulary that `train OVERRIDES` would
use, tokenised into the cache now (on a CPU machine, before a GPU job)."""

from __future__ import annotations

import logging
import sys

from bertpretrain.config_compose import compose
from bertpretrain.data.pipeline import prepare
from bertpretrain.errors import ArgumentParser
from bertpretrain.memory.budget import peak_memory


def main(argv: list[str]) -> None:
    parser = ArgumentParser(
        prog="bertpretrain prepare",
        description="Tokenise the corpus that `bertpretrain train OVERRIDES` would read into "
        "the cache (data.root/cache), once: memory-mapped token arrays that train then opens "
        "in a moment. Takes the same overrides as train.",
        epilog="example: bertpretrain prepare data=text data.files=[big.txt] tokenizer=wordpiece",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for train")
    args = parser.parse_args(argv)
    cfg = compose(args.overrides)[0]
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="[%(asctime)s][%(name)s] %(message)s"
    )
    tokenizer = None
    if cfg.init:  # the corpus is prepared with that model's vocabulary
        from bertpretrain.init_from import init_architecture, init_tokenizer

        tokenizer = init_tokenizer(init_architecture(cfg.init)[0])
    store = prepare(cfg.data, cfg.tokenizer, tokenizer)
    valid = f", {len(store.valid.tokens)} validation tokens" if store.valid is not None else ""
    print(
        f"prepared corpus: {store.path} ({len(store.train.tokens)} training tokens{valid}, "
        f"vocabulary {len(store.tokenizer.vocab)}); peak memory "
        f"{peak_memory() >> 20} MiB"
    )
