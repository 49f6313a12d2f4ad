"""Benchmark bertpretrain against Hugging Face transformers on the same work.

    python scripts/bench.py                 # everything, prints a table, writes bench.json
    python scripts/bench.py --only train --models tiny --reps 5

Measured in one process, contenders interleaved over --reps repetitions, medians reported:
- training throughput (fwd + bwd + clip + Adam step) of our trainer's step and of
  transformers' BertForPreTraining (SDPA attention) on identical sizes, optimizer and
  batches (labels -100 except at the masked positions);
- this machine's matmul peak (fp32, bf16) and each contender's model FLOPs utilisation,
  counting FLOPs on the padded batch as a plain implementation computes them;
- peak memory of a training step (RSS growth on CPU, max_memory_allocated on GPU);
- building the examples of a WikiText-2-train-sized corpus, cold and from the cache;
- the cold start of `bertpretrain encode` as a process;
- `train`'s memory plan against the peak resident memory of real training runs (`--only
  memory`: tiny and base at max_len 64 and 512, each a `bertpretrain train` process);
- `speed.compile` (`--only compile`): the tiny run eager and compiled, the compile time and
  the steady step, and from them a 50- and a 1000-step run's time.
transformers is optional (`pip install -e ".[bench]"`); without it only ours is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bertpretrain import checkpoint
from bertpretrain.config import TokenizerConfig
from bertpretrain.data.batches import BatchStream
from bertpretrain.data.corpus import wikitext
from bertpretrain.data.examples import Dataset, load_dataset
from bertpretrain.model import BertConfig, BertForPretraining, flops_per_sequence
from bertpretrain.optimize import PretrainingLosses, training_step

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "wikitext-2"
SIZES = {"tiny": (2, 128, 2, 256, 0.2), "base": (12, 768, 12, 3072, 0.1)}
TRAIN_TOKENS = 2_100_000  # WikiText-2's train split


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """Best FLOP/s of a large square matmul: the roof our MFU figures are measured against."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


WORD = TokenizerConfig(name="word", lowercase=True, min_freq=5, vocab_size=None)
WORDPIECE = TokenizerConfig(name="wordpiece", lowercase=True, min_freq=2, vocab_size=8000)


def wikitext_dataset(
    train: Path, max_len: int, tokenizer: TokenizerConfig = WORD, cache: Path | None = None
) -> Dataset:
    return load_dataset(wikitext(train, None), tokenizer, max_len, 0, cache)


def real_batches(max_len: int, batch_size: int, count: int) -> tuple[list[dict], int, float]:
    """`count` training batches from the real validation split, the vocabulary size, and
    the mean number of masked positions per example."""
    data = wikitext_dataset(SHARED / "wiki.valid.tokens", max_len)
    stream = BatchStream(data.train, batch_size, seed=0)
    preds = float(data.train.predictions().mean())
    return [stream.batch(i) for i in range(count)], len(data.vocab), preds


def ours(size: str, vocab: int, precision: str, device) -> Callable[[dict], None]:
    layers, hidden, heads, ffn, dropout = SIZES[size]
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(vocab, layers, hidden, heads, ffn, dropout)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)

    def autocast():
        return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")

    losses = PretrainingLosses(model)

    def step(batch):
        training_step(losses, optimizer, [batch], autocast, 1.0)

    return step


def hf_inputs(batch: dict) -> dict:
    """Our batch as transformers wants it: labels -100 except at the real masked positions."""
    tokens = batch["tokens"]
    labels = torch.full_like(tokens, -100)
    real = batch["pred_weights"] > 0
    rows = torch.arange(len(tokens), device=tokens.device)[:, None].expand_as(real)
    labels[rows[real], batch["pred_positions"][real]] = batch["pred_labels"][real]
    keep = torch.arange(tokens.shape[1], device=tokens.device) < batch["valid_lens"][:, None]
    return {
        "input_ids": tokens,
        "token_type_ids": batch["segments"],
        "attention_mask": keep.long(),
        "labels": labels,
        "next_sentence_label": batch["nsp_labels"],
    }


def transformers_bert(size: str, vocab: int, precision: str, device) -> Callable[[dict], None]:
    import transformers

    layers, hidden, heads, ffn, dropout = SIZES[size]
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)

    def step(batch):
        inputs = hf_inputs(batch)
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def _peak_memory_child(make, args, shape, device, queue) -> None:
    batches = [{k: v.to(device) for k, v in b.items()} for b in real_batches(*shape, 2)[0]]
    step = make(*args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for b in batches:
            step(b)
        torch.cuda.synchronize()
        queue.put(torch.cuda.max_memory_allocated())
        return
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * resource.getpagesize()
    for b in batches:
        step(b)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)


def peak_memory(make, args, shape, device) -> float:
    """Peak memory of two steps in a fresh process, so contenders do not share a high-water
    mark (spawned, not forked: a forked child deadlocks in an initialised OpenMP pool)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_peak_memory_child, args=(make, args, shape, device, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


def bench_training(size, max_len, batch_size, precision, reps, steps, device, peaks) -> list[dict]:
    batches, vocab, preds = real_batches(max_len, batch_size, steps + 1)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    layers, hidden, heads, ffn, dropout = SIZES[size]
    flops = flops_per_sequence(BertConfig(vocab, layers, hidden, heads, ffn), max_len, preds)
    contenders = {"bertpretrain": ours}
    try:
        import transformers  # noqa: F401

        contenders["transformers"] = transformers_bert
    except ImportError:
        print("transformers is not installed: measuring bertpretrain only", file=sys.stderr)
    steps_fns = {name: make(size, vocab, precision, device) for name, make in contenders.items()}
    for fn in steps_fns.values():
        fn(batches[0])  # warm-up: allocator, lazy init
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in steps_fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for b in batches[1:]:
                fn(b)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
    peak = peaks[torch.bfloat16 if precision == "bf16" else torch.float32]
    rows = []
    for name, make in contenders.items():
        t = statistics.median(times[name])
        rows.append(
            {
                "what": f"train {size} L={max_len} B={batch_size} {precision}",
                "contender": name,
                "step_s": t,
                "seq_per_s": batch_size / t,
                "tokens_per_s": batch_size * max_len / t,
                "model_gflop_per_step": flops * batch_size / 1e9,
                "mfu": flops * batch_size / t / peak,
                "peak_memory_mb": peak_memory(
                    make, (size, vocab, precision), (max_len, batch_size), device
                )
                / 2**20,
            }
        )
    return rows


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


def bench_encode_start(reps: int) -> list[dict]:
    """Wall time of `bertpretrain encode "a crane is flying"` as a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab = ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>", "a", "crane", "is", "flying"]
        model = BertForPretraining(BertConfig(len(vocab), 2, 128, 2, 256))
        path = Path(tmp) / "step_00000001.pt"
        checkpoint.save(
            {
                "step": 1,
                "model": model.state_dict(),
                "vocab": vocab,
                "config": {"data": {"max_len": 64}},
                "model_config": model.config.to_dict(),
            },
            path,
        )
        command = [sys.executable, "-m", "bertpretrain", "encode", "a crane is flying"]
        rows = []
        for label, cmd in [
            ("bertpretrain encode", [*command, "--checkpoint", str(path)]),
            ("python -c 'import torch' (floor)", [sys.executable, "-c", "import torch"]),
        ]:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times.append(time.perf_counter() - t0)
            rows.append(
                {"what": "cold start", "contender": label, "seconds": statistics.median(times)}
            )
        return rows


# (model, max_len, batch, steps): batches small enough for base to take seconds a step
MEMORY_RUNS = [
    ("tiny", 64, 512, 30),
    ("tiny", 512, 512, 4),
    ("base", 64, 64, 3),
    ("base", 512, 32, 3),
]


def bench_memory() -> list[dict]:
    """Each run's planned total (what `train` logs before it builds the model) against its
    peak resident memory (ru_maxrss of the whole process, the figure the kernel's
    out-of-memory killer goes by), both read from the run's summary.json."""
    rows = []
    for model, max_len, batch, steps in MEMORY_RUNS:
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run(
                [sys.executable, "-m", "bertpretrain", "train", f"model={model}"]
                + [f"data.max_len={max_len}", f"trainer.batch_size={batch}"]
                + [f"trainer.max_steps={steps}", f"data.dir={SHARED}", "data.train_split=valid"]
                + ["data.valid_split=null", f"hydra.run.dir={folder}/run"],
                check=True,
                capture_output=True,
            )
            summary = json.loads((Path(folder) / "run" / "summary.json").read_text())
        planned, peak = summary["planned_memory"], summary["peak_memory"]
        rows.append(
            {
                "what": f"memory {model} L={max_len} batch {batch}",
                "contender": f"grad_accum {summary['grad_accum']}",
                "planned_mb": planned / 2**20,
                "peak_mb": peak / 2**20,
                "planned_over_peak": planned / peak,
            }
        )
    return rows


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


def _cli(args: list[str], cwd: Path) -> tuple[float, str]:
    """`bertpretrain ARGS` as a process: its wall time and its output (stdout + log)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bertpretrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"bertpretrain {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0, out.stdout + out.stderr


def _peak_mb(output: str) -> float:
    return float(re.search(r"peak memory (\d+) MiB", output)[1])


def _train(corpus: Path, root: Path, run: Path, *overrides: str) -> tuple[float, str, dict]:
    """A tiny training run on `corpus` (L=128, batch 128, as the corpora issue measured)."""
    seconds, output = _cli(
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
    rows = _Rows()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = folder or big_corpus(tmp / "corpus", tokens)
        if not (corpus / "wiki.train.tokens").is_file():
            big_corpus(corpus, tokens)
        what = f"prepare {os.path.getsize(corpus / 'wiki.train.tokens') / 1e6:.0f} MB corpus"
        for tokenizer in ("word", "wordpiece"):
            seconds, output = _cli(
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


class _Rows(list):
    """Rows printed as they are measured: a long benchmark that fails keeps what it had."""

    def append(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        super().append(row)


def _logged_at(output: str, line: str) -> float:
    """The wall-clock time of the first log line matching `line`."""
    stamp = re.search(rf"\[([\d-]+ [\d:]+),(\d+)\]\[bertpretrain\.train\]\S* - {line}", output)
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


def bench_compile(steps: int, precisions: list[str], device) -> list[dict]:
    """speed.compile: the tiny reference run (L=64, B=512) eager and torch.compile'd, on
    real batches (each with its own count of real tokens, as in training: the packed
    shapes vary). Compiled twice: with an empty inductor cache (a first run) and again
    with the cache that run left (every later run of the same model on this machine). The
    first steps carry compilation and any recompilation for a new shape; the median of the
    last half is the steady step. From the two, the time of a 50- and a 1000-step run and
    the step count from which compiling pays."""
    batches, vocab, _ = real_batches(64, 512, steps)
    rows = []
    for precision in precisions:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            eager = _timed_steps(batches, vocab, precision, device, compiled=False)
            rows.append(_compile_row(precision, "eager", eager))
            for contender in ("compiled, cold cache", "compiled, warm cache"):
                torch._dynamo.reset()  # forget the compiled graphs, keep the disk cache
                timing = _timed_steps(batches, vocab, precision, device, compiled=True)
                rows.append(_compile_row(precision, contender, timing, eager))
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
    return rows


def _timed_steps(batches, vocab, precision, device, compiled: bool) -> tuple[float, float]:
    """(steady step seconds, extra seconds of the first steps) of training on `batches`."""
    layers, hidden, heads, ffn, dropout = SIZES["tiny"]
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(vocab, layers, hidden, heads, ffn, dropout)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)
    losses = torch.compile(PretrainingLosses(model)) if compiled else PretrainingLosses(model)

    def autocast():
        return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")

    times = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        start = time.perf_counter()
        training_step(losses, optimizer, [batch], autocast, 1.0)
        _sync(device)
        times.append(time.perf_counter() - start)
    steady = statistics.median(times[len(times) // 2 :])
    return steady, max(0.0, sum(times) - steady * len(times))


def _compile_row(precision, contender, timing, eager=None) -> dict:
    steady, extra = timing
    row = {
        "what": f"compile tiny L=64 B=512 {precision}",
        "contender": contender,
        "step_seconds": steady,
        "overhead_seconds": extra,
        "run_50_seconds": extra + 50 * steady,
        "run_1000_seconds": extra + 1000 * steady,
    }
    if eager is not None:
        gain = eager[0] - steady
        row["pays_after_steps"] = (extra - eager[1]) / gain if gain > 0 else math.inf
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'what':<38} {'contender':<32} {'result'}")
    for r in rows:
        if "step_s" in r:
            result = (
                f"{r['seq_per_s']:8.1f} seq/s {r['tokens_per_s']:9.0f} tok/s  step {r['step_s']:.3f} s"
                f"  MFU {100 * r['mfu']:5.1f}%  peak mem {r['peak_memory_mb']:.0f} MB"
            )
        elif "planned_mb" in r:
            result = (
                f"planned {r['planned_mb']:7.0f} MB  peak RSS {r['peak_mb']:7.0f} MB  "
                f"planned/peak {r['planned_over_peak']:.2f}"
            )
        elif "overhead_seconds" in r:
            result = (
                f"step {r['step_seconds']:.3f} s  first steps +{r['overhead_seconds']:.1f} s  "
                f"50 steps {r['run_50_seconds']:.0f} s  1000 steps {r['run_1000_seconds']:.0f} s"
            )
            if "pays_after_steps" in r:
                result += f"  pays after {r['pays_after_steps']:.0f} steps"
        elif "tflops" in r:
            result = f"{r['tflops'] * 1e3:8.1f} GFLOP/s"
        else:
            units = {
                "seconds": "{:8.3f} s",
                "tokenise_seconds": "(store {:.1f} s)",
                "peak_mb": "peak {:.0f} MB",
                "tokens_per_s": "{:.0f} tokens/s",
                "seq_per_s": "{:.1f} seq/s",
                "tokens_per_example": "{:.1f} tokens/example",
            }
            result = "  ".join(f.format(r[k]) for k, f in units.items() if k in r)
        print(f"{r['what']:<38} {r['contender']:<32} {result}")
    by_what: dict[str, dict] = {}
    for r in rows:
        if "step_s" in r:
            by_what.setdefault(r["what"], {})[r["contender"]] = r["seq_per_s"]
    for what, c in by_what.items():
        if "transformers" in c:
            print(
                f"{what}: bertpretrain / transformers = {c['bertpretrain'] / c['transformers']:.2f}x"
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        choices=["train", "examples", "encode", "memory", "corpus", "compile"],
        action="append",
    )
    p.add_argument("--corpus-tokens", type=int, default=100_000_000, help="for --only corpus")
    p.add_argument(
        "--corpus-dir", type=Path, help="--only corpus: reuse (or make) the big corpus here"
    )
    p.add_argument("--compile-steps", type=int, default=40, help="for --only compile")
    p.add_argument("--models", default="tiny,base")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per timed repetition")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="docs/bench.json", help="where to write the results")
    args = p.parse_args()
    only = set(args.only or ["train", "examples", "encode", "memory"])
    device = torch.device(args.device)

    rows: list[dict] = []
    peaks = {d: matmul_peak(d, device) for d in (torch.float32, torch.bfloat16)}
    for d, v in peaks.items():
        rows.append({"what": "matmul peak", "contender": str(d).split(".")[1], "tflops": v / 1e12})
    if "train" in only:
        shapes = {"tiny": [(64, 512)]}
        shapes["base"] = [(128, 8)] if device.type == "cpu" else [(128, 64), (512, 16)]
        for size in args.models.split(","):
            for precision in args.precisions.split(","):
                if size == "base" and precision == "bf16" and device.type == "cpu":
                    continue  # base at bf16 on CPU adds minutes and no decision
                for max_len, batch in shapes[size]:
                    rows += bench_training(
                        size, max_len, batch, precision, args.reps, args.steps, device, peaks
                    )
    if "examples" in only:
        rows += bench_examples(args.reps)
        rows += bench_batches(args.reps)
    if "encode" in only:
        rows += bench_encode_start(args.reps)
    if "memory" in only:
        rows += bench_memory()
    if "corpus" in only:
        rows += bench_corpus(args.corpus_tokens, args.corpus_dir)
    if "compile" in only:
        rows += bench_compile(args.compile_steps, args.precisions.split(","), device)
    print_table(rows)
    sys.stdout.flush()
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
