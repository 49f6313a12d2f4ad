"""A GLUE-layout task made from a WikiText file, to see what pretraining buys without GLUE.

    python scripts/wikitext_task.py ../shared/data/wikitext-2/wiki.test.tokens task/
    bertpretrain finetune task=rte task.dir=task init=outputs/latest
    python scripts/wikitext_task.py --kind single ../shared/data/wikitext-2/wiki.test.tokens t1/
    bertpretrain finetune task=sst2 task.dir=t1 init=outputs/latest

Two kinds of task, each in the layout of a GLUE task (test.tsv has an index and no labels):
- `--kind pair` (the default), RTE's layout (`index  sentence1  sentence2  label`): does
  sentence2 follow sentence1 in the same article ("entailment"), or come from another
  article ("not_entailment")?
- `--kind single`, SST-2's layout (`sentence  label`): is the sentence as written (1), or
  are a few of its adjacent words swapped (0)? Both labels hold the same words, so a bag
  of words cannot tell them apart; only word order can. The final " ." stays in place.
- `--kind number`, SST-2's layout: does the sentence hold a number (1) or not (0)? The
  words alone decide it: a control that fine-tuning learns at all.
- `--kind words`, RTE's layout: are sentence2's few words, shuffled, all in sentence1
  (entailment), or none of them (not_entailment)? Shaped as RTE is (a long premise, a
  short hypothesis), it is a pair task a small model learns, where `pair` stays at
  chance for tiny: only reading both sentences together answers it.
Half of the pair, single and words examples carry each label. The articles are split 60/20/20 into train, dev and
test, so no sentence is in two splits. Pretrain on another WikiText split than the one the
task is made from, or the model has read its sentences.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

HEADING = re.compile(r"^ = [^=].* = $")  # an article's title line; sections have == ... ==
SPLITS = (("train", 0.6), ("dev", 0.2), ("test", 0.2))
LABELS = ("entailment", "not_entailment")
KINDS = ("pair", "single", "number", "words")
# Each kind's columns in train/dev and in test, as GLUE's RTE and SST-2 files have them.
COLUMNS = {
    "pair": (("index", "sentence1", "sentence2", "label"), ("index", "sentence1", "sentence2")),
    "single": (("sentence", "label"), ("index", "sentence")),
    "number": (("sentence", "label"), ("index", "sentence")),
    "words": (("index", "sentence1", "sentence2", "label"), ("index", "sentence1", "sentence2")),
}
DIGIT = re.compile(r"[0-9]")
WORDS_PER_SWAP = 8  # one swap of adjacent words per 8 words, and at least one


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


def pairs(chosen: list, rng: random.Random) -> list[dict[str, str]]:
    """A next-sentence pair per adjacent pair of sentences, and as many pairs whose second
    sentence comes from another article of the same split."""
    out = []
    sentences = [(i, s) for i, a in enumerate(chosen) for p in a for s in p]
    for i, article in enumerate(chosen):
        for paragraph in article:
            for a, b in zip(paragraph, paragraph[1:]):
                if rng.random() < 0.5:
                    out.append({"sentence1": a, "sentence2": b, "label": LABELS[0]})
                else:
                    j, other = rng.choice(sentences)
                    while j == i:
                        j, other = rng.choice(sentences)
                    out.append({"sentence1": a, "sentence2": other, "label": LABELS[1]})
    rng.shuffle(out)
    return out


def singles(chosen: list, rng: random.Random) -> list[dict[str, str]]:
    """Every sentence once: half as written (label 1), half with its word order disturbed
    (label 0). Each sentence appears under one label only, so neither can be memorised."""
    out = []
    for sentence in (s for article in chosen for paragraph in article for s in paragraph):
        if rng.random() < 0.5:
            out.append({"sentence": sentence, "label": "1"})
        else:
            out.append({"sentence": disturbed(sentence, rng), "label": "0"})
    rng.shuffle(out)
    return out


def numbers(chosen: list, rng: random.Random) -> list[dict[str, str]]:
    """Every sentence once, labelled 1 when it holds a number (a digit), else 0: a task the
    words alone decide, to check that fine-tuning learns at all (about a third hold one)."""
    sentences = [s for article in chosen for paragraph in article for s in paragraph]
    out = [{"sentence": s, "label": str(int(bool(DIGIT.search(s))))} for s in sentences]
    rng.shuffle(out)
    return out


def words(chosen: list, rng: random.Random) -> list[dict[str, str]]:
    """Every sentence as sentence1 once; sentence2 is 3 to 6 of its words (entailment) or
    as many words of another sentence of the split that sentence1 does not hold
    (not_entailment), shuffled either way, so neither order nor a shared word gives the
    label away: each word must be looked for in sentence1."""
    sentences = [s for article in chosen for paragraph in article for s in paragraph]
    out = []
    for sentence in sentences:
        held = sentence.split()[:-1]
        if rng.random() < 0.5:
            picked, label = held, LABELS[0]
        else:
            picked, label = [], LABELS[1]
            while len(picked) < 3:
                present = set(held)
                picked = [w for w in rng.choice(sentences).split()[:-1] if w not in present]
        chosen_words = rng.sample(picked, min(len(picked), rng.randint(3, 6)))
        out.append({"sentence1": sentence, "sentence2": " ".join(chosen_words), "label": label})
    rng.shuffle(out)
    return out


def disturbed(sentence: str, rng: random.Random) -> str:
    """The sentence with a few adjacent words swapped (the last word, its " .", stays last:
    a period out of place would give the label away without reading the order). Redrawn
    until it differs from the sentence, which a swap of two equal words would not."""
    words, end = sentence.split()[:-1], sentence.split()[-1]
    while True:
        out = list(words)
        swaps = rng.sample(range(len(words) - 1), 1 + len(words) // WORDS_PER_SWAP)
        for i in swaps:
            out[i], out[i + 1] = out[i + 1], out[i]
        if out != words:
            return " ".join([*out, end])


def make_task(
    source: Path, out: Path, examples: int | None = None, seed: int = 0, kind: str = "pair"
) -> dict:
    """Write train.tsv, dev.tsv and test.tsv of a `kind` task into `out`; the number of
    rows of each. `examples` caps the train split (dev and test get a third of it each)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    make_rows = {"pair": pairs, "single": singles, "number": numbers, "words": words}[kind]
    rng = random.Random(seed)
    found = articles(source)
    rng.shuffle(found)
    out.mkdir(parents=True, exist_ok=True)
    counts, start = {}, 0
    for name, share in SPLITS:
        end = start + round(share * len(found))
        rows = make_rows(found[start:end], rng)
        if examples is not None:
            rows = rows[: examples if name == "train" else max(1, examples // 3)]
        write_split(out / f"{name}.tsv", rows, COLUMNS[kind][name == "test"])
        counts[name] = len(rows)
        start = end
    return counts


def write_split(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...]) -> None:
    """A header row of `columns`, then each row's values of them (`index`: its number)."""
    lines = ["\t".join(columns)]
    for i, row in enumerate(rows):
        lines.append("\t".join(str(i) if c == "index" else row[c] for c in columns))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a WikiText file, e.g. wiki.test.tokens")
    parser.add_argument("out", type=Path, help="the folder to write train/dev/test.tsv into")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="pair",
        help="pair, words: RTE's layout; single, number: SST-2's",
    )
    parser.add_argument("--examples", type=int, default=None, help="cap the train split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = make_task(args.source, args.out, args.examples, args.seed, args.kind)
    what = "pairs" if args.kind in ("pair", "words") else "sentences"
    print(", ".join(f"{name} {n}" for name, n in counts.items()), f"{what} in {args.out}")


if __name__ == "__main__":
    main()
