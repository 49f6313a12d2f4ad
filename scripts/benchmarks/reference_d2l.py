"""The reference's own training code: d2l.ai's "Pretraining BERT", as the chapter runs it.

    pip install --no-deps d2l==1.0.3      # its pinned dependencies would replace ours
    python scripts/reference_d2l.py --steps 40 --train ../shared/data/wikitext-2/wiki.valid.tokens

d2l's `BERTModel`, `_WikiTextDataset` and `_get_batch_loss_bert`, and the chapter's
`train_bert` loop (Adam at 0.01, batch 512, max_len 64, fp32), on the text file given as
WikiText-2's training split. Prints one JSON line: the steps, the seconds from the start
of the process to the end of the last step, and the losses. `scripts/bench.py --only
command` runs it for two step counts and takes the difference, so that start-up (import,
d2l's Python-level data preparation) cancels out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

STARTED = time.perf_counter()


def import_d2l():
    """d2l.torch, whose vision helpers import torchvision: the BERT code never calls
    them, and torchvision's wheel does not load beside every torch, so an empty module
    stands in for it when it is missing."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        for name in ("torchvision", "torchvision.transforms"):
            sys.modules[name] = types.ModuleType(name)
    from d2l import torch as d2l

    return d2l


def train_bert(d2l, train_iter, net, loss, vocab_size, num_steps: int) -> tuple[float, float]:
    """The chapter's `train_bert` on one CPU, without its plot: the (mlm, nsp) loss means."""
    import torch

    net(*next(iter(train_iter))[:4])  # d2l's lazy layers take their shapes here
    trainer = torch.optim.Adam(net.parameters(), lr=0.01)
    metric, step = d2l.Accumulator(4), 0
    while step < num_steps:
        for tokens, segments, valid_lens, positions, weights, mlm_y, nsp_y in train_iter:
            trainer.zero_grad()
            mlm_l, nsp_l, total = d2l._get_batch_loss_bert(
                net,
                loss,
                vocab_size,
                tokens,
                segments,
                valid_lens,
                positions,
                weights,
                mlm_y,
                nsp_y,
            )
            total.backward()
            trainer.step()
            metric.add(mlm_l, nsp_l, tokens.shape[0], 1)
            step += 1
            if step == num_steps:
                break
    return metric[0] / metric[3], metric[1] / metric[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--train", type=Path, required=True, help="WikiText-style text file")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-len", type=int, default=64)
    args = parser.parse_args()

    import torch
    from torch import nn

    d2l = import_d2l()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:  # _read_wiki wants wiki.train.tokens
        (Path(folder) / "wiki.train.tokens").symlink_to(args.train.resolve())
        paragraphs = d2l._read_wiki(folder)
    train_set = d2l._WikiTextDataset(paragraphs, args.max_len)
    train_iter = torch.utils.data.DataLoader(train_set, args.batch_size, shuffle=True)
    vocab = train_set.vocab
    net = d2l.BERTModel(
        len(vocab), num_hiddens=128, ffn_num_hiddens=256, num_heads=2, num_blks=2, dropout=0.2
    )
    mlm, nsp = train_bert(d2l, train_iter, net, nn.CrossEntropyLoss(), len(vocab), args.steps)
    seconds = time.perf_counter() - STARTED
    print(json.dumps({"steps": args.steps, "seconds": seconds, "mlm": mlm, "nsp": nsp}))


if __name__ == "__main__":
    main()
