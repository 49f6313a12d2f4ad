"""What every benchmark shares: the shared WikiText-2 splits and real batches from them,
the model sizes, the matmul peak, timing on a device, `bertpretrain` as a process, and
the rows every benchmark returns and `print_table` prints."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from bertpretrain.config import TokenizerConfig
from bertpretrain.data.batches import BatchStream
from bertpretrain.data.corpus import wikitext
from bertpretrain.data.pipeline import Dataset, load_dataset

REPO = Path(__file__).resolve().parents[2]
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
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def sync(device: torch.device) -> None:
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


# `bertpretrain train` on WikiText-2's validation split alone, as the speed and memory
# benchmarks run it: the one real corpus this machine has, and no validation pass
ON_VALID_SPLIT = [f"data.dir={SHARED}", "data.train_split=valid", "data.valid_split=null"]


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """A process's wall time and its output (stdout + log); a failure raises."""
    t0 = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0, out.stdout + out.stderr


def cli(args: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """`bertpretrain ARGS` as a process: its wall time and its output (stdout + log)."""
    return timed([sys.executable, "-m", "bertpretrain", *args], cwd, env)


class Rows(list):
    """Rows printed as they are measured: a long benchmark that fails keeps what it had."""

    def append(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        super().append(row)


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
        elif "dev_score" in r:
            result = (
                f"dev {r['metric']} {r['dev_score']:.4f}  epoch {r['epoch_seconds']:.2f} s"
                f"  ({r['seq_per_s']:.0f} seq/s, {r['steps_per_epoch']} steps)"
            )
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


def machine(device: torch.device) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


def write_json(path: Path, device: torch.device, rows: list[dict]) -> None:
    path.write_text(json.dumps({"machine": machine(device), "rows": rows}, indent=1))
