"""`bertpretrain plan`: the printed plan, its errors, and its estimate against measured memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import build_wikitext, run_cli

from bertpretrain import plan
from bertpretrain.data.batches import BatchStream
from bertpretrain.errors import UserError
from bertpretrain.model import BertConfig, BertForPretraining, BertModel, count_parameters

LARGE_512 = ["model=large", "data.max_len=512", "trainer.batch_size=32"]


def test_plan_prints_parameters_breakdown_verdict_and_largest_micro_batches(tmp_path, cli_env):
    result = run_cli(["plan", *LARGE_512, "--device-memory", "80GB"], tmp_path, cli_env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "parameters: 336.2M with vocabulary 30522" in out
    for row in ("weights (fp32)", "gradients (fp32)", "optimizer state (Adam: 2 x fp32)"):
        assert re.search(rf"^  {re.escape(row)} +\d+\.\d+ GiB$", out, re.MULTILINE), row
    assert re.search(r"^  activations for a micro-batch of 32 +\d", out, re.MULTILINE)
    assert re.search(r"^    layers: 24 x ", out, re.MULTILINE)
    assert "74.51 GiB (--device-memory 80GB)" in out
    assert re.search(r"^fits: [\d.]+ GiB of 74\.51 GiB", out, re.MULTILINE)
    largest = re.search(
        r"largest micro-batch that fits: (\d+) without gradient checkpointing, (\d+) with "
        r"model.gradient_checkpointing=true",
        out,
    )
    assert largest and 0 < int(largest[1]) < int(largest[2])
    assert not list(tmp_path.iterdir()), "plan must write nothing"


@pytest.mark.parametrize(
    "args",
    [["model=huge"], ["trainer.batch_size=abc"]],
    ids=["unknown-group-option", "wrong-type"],
)
def test_plan_rejects_bad_input_with_one_line_and_exit_2(tmp_path, cli_env, args):
    result = run_cli(["plan", *args], tmp_path, cli_env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("bertpretrain: error: ")


def test_device_memory_sizes_decimal_binary_and_bytes():
    assert plan.parse_size("80GB") == 80 * 10**9
    assert plan.parse_size("80GiB") == 80 * 2**30
    assert plan.parse_size("16G") == 16 * 2**30
    assert plan.parse_size("1.5 tb") == 1.5 * 10**12
    assert plan.parse_size("123456") == 123456
    with pytest.raises(UserError, match="--device-memory 'lots' is not a size"):
        plan.parse_size("lots")


def test_closed_form_parameter_count_matches_the_model():
    cfg = plan.compose_config(["model=tiny"])
    for layers, hidden, heads, ffn in [(2, 128, 2, 256), (3, 64, 4, 96)]:
        cfg.model.num_layers, cfg.model.hidden_size = layers, hidden
        cfg.model.num_heads, cfg.model.ffn_size = heads, ffn
        model = BertForPretraining(BertConfig(1000, layers, hidden, heads, ffn))
        assert plan.count_parameters(cfg, 1000) == count_parameters(model)


def test_fits_agrees_with_the_largest_micro_batch_and_checkpointing_helps():
    cfg = plan.compose_config([*LARGE_512, "trainer.precision=bf16"])
    for memory in (24 * 2**30, 80 * 10**9):
        p = plan.make_plan(cfg, device="cuda", memory=memory)
        assert p.fits == (p.micro_batch <= p.largest)
        assert p.largest_checkpointed > p.largest
    padded = plan.make_plan(cfg, device="cpu", memory=2**40)
    packed = plan.make_plan(cfg, fill=0.5, device="cpu", memory=2**40)
    assert packed.activation_total < padded.activation_total


def test_oom_advice_is_one_line_naming_what_fits(monkeypatch):
    cfg = plan.compose_config([*LARGE_512])
    monkeypatch.setattr(plan, "device_memory", lambda name: 24 * 2**30)
    advice = plan.oom_advice(cfg, torch.device("cpu"))
    assert re.fullmatch(
        r"out of memory at micro-batch 32: the plan says the largest that fits is \d+ "
        r"\(\d+ with model.gradient_checkpointing=true\); lower trainer.batch_size or raise "
        r"trainer.grad_accum",
        advice,
    ), advice


# One training step of our model in a fresh process, on real WikiText-2 batches.
#
# What is compared: peak RSS during forward + backward + clip + Adam step, minus the RSS
# just before it. Before it, one warm-up step (on 4 sequences) has created the gradients
# and Adam's states, and they stay: the step accumulates into them, as a second
# micro-step of gradient accumulation does. So weights, gradients and optimizer state are
# in the baseline, and the growth is what the plan adds per micro-batch: max(activations
# + backward buffers, optimizer.step() scratch). glibc would keep freed memory for reuse
# and hide part of the growth; MALLOC_MMAP_THRESHOLD_ makes every tensor its own mapping,
# returned on free, so RSS follows live tensors.
MEASURE = r"""
import json, os, sys
import torch
from bertpretrain.model import BertConfig, BertForPretraining

spec = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
batch = torch.load(spec["batch"])
model = BertForPretraining(BertConfig(**spec["model"]))
model.bert.gradient_checkpointing = spec["checkpointing"]
model.train()
# as train.make_optimizer builds it for conf/optim/adam.yaml (importing train costs a second)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)

def step(batch):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
        mlm, nsp = model.losses(batch)
    (mlm + nsp).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def high_water_mark():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))

step({k: v[:4] for k, v in batch.items()})
# Reset the peak-RSS mark to the current RSS (Linux: "5" > clear_refs), so a transient
# peak from start-up (imports, loading) cannot hide the step's own peak.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss()
step(batch)
peak = high_water_mark()
print(json.dumps({"growth": peak - before, "new_peak": peak > before}))
"""

CASES = {  # name: (overrides, checkpointing)
    "tiny-len64-batch64": (["model=tiny", "data.max_len=64", "trainer.batch_size=64"], False),
    "tiny-len64-batch256": (["model=tiny", "data.max_len=64", "trainer.batch_size=256"], False),
    "4x256-len128-batch16": (
        [
            "model=tiny",
            "model.num_layers=4",
            "model.hidden_size=256",
            "model.num_heads=4",
            "model.ffn_size=1024",
            "model.dropout=0.1",
            "data.max_len=128",
            "trainer.batch_size=16",
        ],
        False,
    ),
    "tiny-len64-batch256-checkpointed": (
        ["model=tiny", "data.max_len=64", "trainer.batch_size=256"],
        True,
    ),
}


def _has_checkpointing() -> bool:
    return hasattr(BertModel(BertConfig(8, 1, 8, 2, 8)), "gradient_checkpointing")


@pytest.fixture(scope="module")
def measurements(tmp_path_factory, wikitext_dir):
    """{case: (config, vocabulary size, fill, running process)}: every case's measuring
    process starts at once, since each pays seconds of torch's import."""
    folder = tmp_path_factory.mktemp("plan-measure")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    datasets, started = {}, {}
    for case, (overrides, checkpointing) in CASES.items():
        if checkpointing and not _has_checkpointing():
            continue
        cfg = plan.compose_config([*overrides, "trainer.device=cpu"])
        max_len = cfg.data.max_len
        if max_len not in datasets:
            data = build_wikitext(wikitext_dir / "wiki.valid.tokens", None, max_len, 5, 0)
            datasets[max_len] = (len(data.vocab), data.train)
        vocab, examples = datasets[max_len]
        batch = BatchStream(examples, cfg.trainer.batch_size, 0).batch(0)
        torch.save(batch, folder / f"{case}.pt")
        fill = float(batch["valid_lens"].sum()) / batch["tokens"].numel()
        m = cfg.model
        spec = {
            "batch": str(folder / f"{case}.pt"),
            "model": {
                "vocab_size": vocab,
                "num_layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "num_heads": m.num_heads,
                "ffn_size": m.ffn_size,
                "dropout": m.dropout,
                "max_position": m.max_position,
            },
            "checkpointing": checkpointing,
            "bf16": cfg.trainer.precision == "bf16",
        }
        process = subprocess.Popen(
            [sys.executable, "-c", MEASURE, json.dumps(spec)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[case] = (cfg, vocab, fill, process)
    yield started
    for *_, process in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss")
@pytest.mark.parametrize("case", list(CASES))
def test_activation_estimate_within_25_percent_of_measured_peak(case, measurements):
    if case not in measurements:
        pytest.skip("the model has no gradient checkpointing yet")
    cfg, vocab, fill, process = measurements[case]
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    measured = json.loads(stdout)
    assert measured["new_peak"], "the step did not set a new high-water mark: nothing measured"

    checkpointing = CASES[case][1]
    parts = plan.activation_bytes(cfg, vocab, cfg.trainer.batch_size, fill, "cpu", checkpointing)
    scratch = plan.make_plan(cfg, vocab, fill, "cpu", memory=1 << 50).step_scratch
    estimate = max(sum(parts.values()), scratch)
    ratio = estimate / measured["growth"]
    assert 0.75 <= ratio <= 1.25, (
        f"{case}: estimate {estimate / 2**20:.1f} MiB, measured {measured['growth'] / 2**20:.1f} "
        f"MiB (fill {fill:.3f}): {parts}"
    )
