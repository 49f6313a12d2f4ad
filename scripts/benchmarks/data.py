"""The data path: making a batch, preparing WikiText-2-sized text cold and from the
cache, and a ~100M-token corpus end to end against `datasets.map` (--only corpus)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import (
    SHARED,
    TRAIN_TOKENS,
    WORD,
    WORDPIECE,
    Rows,
    cli,
    wikitext_dataset,
)
from bertpretrain.data.batches import BatchStream
from bertpretrain.data.corpus import wikitext
from bertpretrain.data.pipeline import load_dataset


def bench_batches(reps: int) -> list[dict]:
    """What making a batch costs the loop (or a DataLoader worker): cutting 512 pairs out
    of the memory-mapped store, padding them to 64 and masking them."""
    rows = []
    for label, tokenizer, wwm, dynamic in (
        ("word, static masks", WORD, False, False),
        ("WordPiece 8000, whole words, dynamic", WORDPIECE, True, True),
    ):
        data = load_dataset(
            wikitext(SHARED / "wiki.valid.tokens", None), tokenizer, 64, 0, None, wwm
        )
        stream = BatchStream(data.train, 512, seed=0, dynamic=dynamic)
        times = []
        for rep in range(max(reps, 5)):
            t0 = time.perf_counter()
            stream.batch(rep)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "what": "making a batch of 512 x 64",
                "contender": label,
                "seconds": statistics.median(times),
            }
        )
    return rows


def corpus_like_train(folder: Path) -> Path:
    """A WikiText-2-train-sized corpus: the shared splits, concatenated until 2.1M tokens."""
    parts = [(SHARED / f"wiki.{s}.tokens").read_text(encoding="utf-8") for s in ("valid", "test")]
    text, tokens = [], 0
    while tokens < TRAIN_TOKENS:
        for part in parts:
            text.append(part)
            tokens += len(part.split())
    path = folder / "wiki.train.tokens"
    path.write_text("".join(text), encoding="utf-8")
    return path


def bench_examples(reps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_like_train(Path(tmp))
        tokens = len(corpus.read_text(encoding="utf-8").split())
        cold, cached, wordpiece = [], [], []
        for rep in range(reps):
            cache = Path(tmp) / f"cache{rep}"
            t0 = time.perf_counter()
            wikitext_dataset(corpus, 64, cache=cache)  # builds, then writes the cache
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            wikitext_dataset(corpus, 64, cache=cache)
            cached.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            wikitext_dataset(corpus, 64, WORDPIECE)  # trains the vocabulary too
            wordpiece.append(time.perf_counter() - t0)
    what = f"prepare + pairs ({tokens / 1e6:.2f}M tokens, max_len 64)"
    return [
        {"what": what, "contender": "cold (incl. cache write)", "seconds": statistics.median(cold)},
        {"what": what, "contender": "from cache", "seconds": statistics.median(cached)},
        {
            "what": what,
            "contender": "cold, WordPiece 8000 trained",
            "seconds": statistics.median(wordpiece),
        },
    ]


def big_corpus(folder: Path, tokens: int) -> Path:
    """A WikiText-style corpus of about `tokens` whitespace tokens: the shared splits'
    lines, shuffled afresh for each copy (so no two stretches repeat), as
    wiki.train.tokens, with the real validation split beside it. Made, never committed."""
    import random

    lines = []
    for split in ("valid", "test"):
        lines += (SHARED / f"wiki.{split}.tokens").read_text(encoding="utf-8").splitlines(True)
    copies = -(-tokens // sum(len(line.split()) for line in lines))
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(folder / "wiki.train.tokens", "w", encoding="utf-8") as f:
        for _ in range(copies):
            rng.shuffle(lines)
            f.writelines(lines)
    (folder / "wiki.valid.tokens").write_bytes((SHARED / "wiki.valid.tokens").read_bytes())
    return folder


def _peak_mb(output: str) -> float:
    return float(re.search(r"peak memory (\d+) MiB", output)[1])


def _train(corpus: Path, root: Path, run: Path, *overrides: str) -> tuple[float, str, dict]:
    """A tiny training run on `corpus` (L=128, batch 128, as the corpora issue measured)."""
    seconds, output = cli(
        ["train", "model=tiny", f"data.dir={corpus}", f"data.root={root}", "data.max_len=128"]
        + ["trainer.batch_size=128", "trainer.log_every=1", f"hydra.run.dir={run}", *overrides],
        run.parent,
    )
    return seconds, output, json.loads((run / "summary.json").read_text())


def bench_corpus(tokens: int, folder: Path | None) -> list[dict]:
    """The corpora targets on a ~100M-token corpus: preparing it (word and WordPiece), the
    second run's way to its first step, the memory of stepping on it against WikiText-2,
    BERT's pairing at 512, and what users would use instead: datasets.map with
    BertTokenizerFast and group_texts on 2 processes."""
    rows = Rows()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = folder or big_corpus(tmp / "corpus", tokens)
        if not (corpus / "wiki.train.tokens").is_file():
            big_corpus(corpus, tokens)
        what = f"prepare {os.path.getsize(corpus / 'wiki.train.tokens') / 1e6:.0f} MB corpus"
        for tokenizer in ("word", "wordpiece"):
            seconds, output = cli(
                [
                    "prepare",
                    f"data.dir={corpus}",
                    f"data.root={tmp / 'root'}",
                    f"tokenizer={tokenizer}",
                ],
                tmp,
            )
            count = int(re.search(r"\((\d+) training tokens", output)[1])
            tokenising = float(re.search(r"paragraphs, in ([\d.]+) s", output)[1])
            rows.append(
                {
                    "what": what,
                    "contender": f"bertpretrain prepare, {tokenizer}",
                    "seconds": seconds,
                    "tokenise_seconds": tokenising,  # the store alone, vocabulary known
                    "peak_mb": _peak_mb(output),
                    "tokens_per_s": count / seconds,
                }
            )
        # The store is there now: time from launch to the model built (data opened, pairs
        # made or read) and to the first step's log line. The floor: `import torch`, and
        # the optimizer's construction, which imports torch._dynamo.
        for attempt in ("first", "again"):  # the second finds the pairs the first saved
            launched = time.time()
            _, output, _ = _train(
                corpus, tmp / "root", tmp / f"start-{attempt}", "trainer.max_steps=1"
            )
            for label, line in (("model built", r"model tiny"), ("step 1 logged", r"step 1/")):
                rows.append(
                    {
                        "what": f"second run ({attempt} with these pairs): launch to {label}",
                        "contender": "bertpretrain train (store cached)",
                        "seconds": _logged_at(output, line) - launched,
                    }
                )
        small = tmp / "wikitext-2-sized"
        small.mkdir()
        corpus_like_train(small)
        (small / "wiki.valid.tokens").write_bytes((SHARED / "wiki.valid.tokens").read_bytes())
        for label, where in (("WikiText-2-sized", small), ("100M-token", corpus)):
            seconds, output, summary = _train(
                where, tmp / "root", tmp / label, "trainer.max_steps=30", "trainer.eval_every=0"
            )
            rows.append(
                {
                    "what": "stepping 30 steps, tiny L=128 B=128",
                    "contender": f"{label} corpus",
                    "peak_mb": summary["peak_memory"] / 2**20,
                    "seq_per_s": _last_seq_per_s(output),
                }
            )
        seconds, output, summary = _train(
            corpus,
            tmp / "root",
            tmp / "bert512",
            "data.pairing=bert",
            "data.max_len=512",
            "trainer.batch_size=32",
            "trainer.max_steps=3",
        )
        rows.append(
            {
                "what": "pairing=bert max_len=512, 3 steps of 32",
                "contender": "100M-token corpus",
                "seconds": seconds,
                "peak_mb": summary["peak_memory"] / 2**20,
                "tokens_per_example": summary["tokens_per_example"],
            }
        )
        rows.append(_datasets_map(corpus, tmp))
    return rows


def _logged_at(output: str, line: str) -> float:
    """The wall-clock time of the first log line matching `line`."""
    stamp = re.search(rf"\[([\d-]+ [\d:]+),(\d+)\]\[bertpretrain[\w.]*\]\S* - {line}", output)
    return time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) + int(stamp[2]) / 1e3


def _last_seq_per_s(output: str) -> float:
    return float(re.findall(r"([\d.]+) seq/s", output)[-1])


DATASETS_MAP = """
import json, resource, sys, time
from datasets import load_dataset
from transformers import BertTokenizerFast

if __name__ == "__main__":
    corpus, vocab, max_len, cache = sys.argv[1:5]
    t0 = time.perf_counter()
    tok = BertTokenizerFast.from_pretrained(vocab)  # a folder: vocab.txt + tokenizer_config
    ds = load_dataset("text", data_files={"train": corpus}, split="train", cache_dir=cache)

    def tokenize(batch):
        return tok(batch["text"], add_special_tokens=False, return_attention_mask=False,
                   return_token_type_ids=False)

    def group_texts(batch):  # run_mlm.py's: concatenate, cut into max_len blocks
        ids = [i for row in batch["input_ids"] for i in row]
        cut = len(ids) // int(max_len) * int(max_len)
        return {"input_ids": [ids[i : i + int(max_len)] for i in range(0, cut, int(max_len))]}

    ds = ds.map(tokenize, batched=True, num_proc=2, remove_columns=["text"])
    ds = ds.map(group_texts, batched=True, num_proc=2)
    seconds = time.perf_counter() - t0
    kib = lambda who: resource.getrusage(who).ru_maxrss
    print(json.dumps({"seconds": seconds, "blocks": len(ds),
                      "peak_mb": max(kib(resource.RUSAGE_SELF), kib(resource.RUSAGE_CHILDREN)) / 1024}))
"""


def _datasets_map(corpus: Path, tmp: Path) -> dict:
    """run_mlm.py's data path on the same corpus and a WordPiece vocabulary of ours."""
    states = [json.loads(p.read_text()) for p in (tmp / "root" / "cache").glob("tokenizer-*")]
    vocab = next(state["vocab"] for state in states if state["kind"] == "wordpiece")
    path = tmp / "hf-tokenizer"
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    keys = ["unk_token", "pad_token", "mask_token", "cls_token", "sep_token"]
    specials = dict(zip(keys, vocab[:5]))  # our reserved tokens lead our vocabulary
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True} | specials))
    script = tmp / "datasets_map.py"
    script.write_text(DATASETS_MAP)
    out = subprocess.run(
        [sys.executable, str(script), str(corpus / "wiki.train.tokens"), str(path), "128"]
        + [str(tmp / "hf-cache")],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "what": "tokenise the corpus for MLM",
        "contender": "datasets.map + BertTokenizerFast + group_texts, num_proc=2",
        "seconds": result["seconds"],
        "peak_mb": result["peak_mb"],
    }
