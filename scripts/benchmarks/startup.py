"""The cold start of `bertpretrain encode` as a process, against `import torch` alone."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertpretrain.model.bert import BertConfig, BertForPretraining
from bertpretrain.training import checkpoint


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
