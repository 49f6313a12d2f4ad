"""A GLUE-layout task made from a WikiText file, to see what pretraining buys without GLUE.

    python scripts/wikitext_task.py ../shared/data/wikitext-2/wiki.test.tokens task/
    bertpretrain finetune task=rte task.dir=task init=outputs/latest

The task has RTE's layout (`index  sentence1  sentence2  label`; test.tsv without labels)
and asks: does sentence2 follow sentence1 in the same article ("entailment"), or come from
another article ("not_entailment")? Half of the pairs are each. The articles are split
60/20/20 into train, dev and test, so no sentence is in two splits. Pretrain on another
WikiText split than the one the task is made from, or the model has seen its pairs.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

HEADING = re.compile(r"^ = [^=].* = $")  # an article's title line; sections have == ... ==
SPLITS = (("train", 0.6), ("dev", 0.2), ("test", 0.2))
LABELS = ("entailment", "not_entailment")


def articles(path: Path) -> list[list[list[str]]]:
    """Each article's paragraphs, each a list of sentences (split after " . ")."""
    found: list[list[list[str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if HEADING.match(line):
            found.append([])
        elif line.strip() and not line.strip().startswith("=") and found:
            split = line.strip().split(" . ")
            parts = [s if s.endswith(" .") else s + " ." for s in split if len(s.split()) > 3]
            if len(parts) > 1:
                found[-1].append(parts)
    return [a for a in found if a]


def pairs(chosen: list, rng: random.Random) -> list[tuple[str, str, str]]:
    """A next-sentence pair per adjacent pair of sentences, and as many pairs whose second
    sentence comes from another article of the same split."""
    out = []
    sentences = [(i, s) for i, a in enumerate(chosen) for p in a for s in p]
    for i, article in enumerate(chosen):
        for paragraph in article:
            for a, b in zip(paragraph, paragraph[1:]):
                if rng.random() < 0.5:
                    out.append((a, b, LABELS[0]))
                else:
                    j, other = rng.choice(sentences)
                    while j == i:
                        j, other = rng.choice(sentences)
                    out.append((a, other, LABELS[1]))
    rng.shuffle(out)
    return out


def make_task(source: Path, out: Path, examples: int | None = None, seed: int = 0) -> dict:
    """Write train.tsv, dev.tsv and test.tsv into `out`; the number of rows of each.
    `examples` caps the train split (dev and test get a third of it each)."""
    rng = random.Random(seed)
    found = articles(source)
    rng.shuffle(found)
    out.mkdir(parents=True, exist_ok=True)
    counts, start = {}, 0
    for name, share in SPLITS:
        end = start + round(share * len(found))
        rows = pairs(found[start:end], rng)
        if examples is not None:
            rows = rows[: examples if name == "train" else max(1, examples // 3)]
        test = name == "test"
        lines = ["index\tsentence1\tsentence2" + ("" if test else "\tlabel")]
        for i, (a, b, label) in enumerate(rows):
            lines.append(f"{i}\t{a}\t{b}" + ("" if test else f"\t{label}"))
        (out / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[name] = len(rows)
        start = end
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a WikiText file, e.g. wiki.test.tokens")
    parser.add_argument("out", type=Path, help="the folder to write train/dev/test.tsv into")
    parser.add_argument("--examples", type=int, default=None, help="cap the train split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = make_task(args.source, args.out, args.examples, args.seed)
    print(", ".join(f"{name} {n}" for name, n in counts.items()), f"pairs in {args.out}")


if __name__ == "__main__":
    main()
