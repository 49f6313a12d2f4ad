"""The speed group does what it says, and only that: the same losses, faster or leaner."""

import pytest
import torch
from conftest import build_wikitext

from bertpretrain import device
from bertpretrain.config_compose import compose
from bertpretrain.data.batches import BatchStream
from bertpretrain.distributed import Ranks
from bertpretrain.model.bert import BertConfig, BertForPretraining
from bertpretrain.training.optimize import PretrainingLosses
from bertpretrain.training.setup import make_module


def test_speed_threads_sets_torchs_threads_and_null_keeps_its_default():
    from bertpretrain.training.setup import apply_threads

    before = torch.get_num_threads()
    try:
        apply_threads(compose(["speed.threads=null"])[0].speed)
        assert torch.get_num_threads() == before
        apply_threads(compose(["speed.threads=1"])[0].speed)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_speed_compile_gives_the_eager_losses_and_gradients(wikitext_dir):
    data = build_wikitext(wikitext_dir / "wiki.valid.tokens", None, 64, 5, 0)
    batch = BatchStream(data.train, 16, seed=0).batch(0)
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(len(data.vocab), 1, 32, 2, 64, dropout=0.0))
    compiled = make_module(
        compose(["speed.compile=true"])[0].speed,
        PretrainingLosses(model),
        torch.device("cpu"),
        Ranks(),
    )
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    sum(compiled(batch)).backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    eager = PretrainingLosses(model)(batch)
    sum(eager).backward()
    torch.testing.assert_close(torch.stack(compiled(batch)), torch.stack(eager))
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_speed_compile_on_the_cpu_warns_that_eager_is_faster(caplog):
    model = BertForPretraining(BertConfig(50, 1, 16, 2, 32))
    speed = compose(["speed.compile=true"])[0].speed
    with caplog.at_level("INFO"):
        make_module(speed, PretrainingLosses(model), torch.device("cpu"), Ranks())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "speed.compile=false is faster" in warned[0]
    caplog.clear()
    make_module(compose([])[0].speed, PretrainingLosses(model), torch.device("cpu"), Ranks())
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_speed_compile_leaves_the_cpus_bucketed_attention_eager():
    """Its bucket layout is Python numbers made from each batch's lengths: traced, every
    new step compiled again (150 to 200 s a tiny bf16 step). A compiled step calls it as it
    is, so compiling a call of it makes no graph."""
    from torch._dynamo.utils import counters

    from bertpretrain.model.attention import pack
    from bertpretrain.model.cpu_attention import cpu_attention

    packing = pack(torch.tensor([5, 9, 3, 7]), 12, round_rows=True)
    qkv = torch.randn(len(packing.index), 3 * 16, requires_grad=True)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda x: cpu_attention(x, packing, 2, 0.1))
    torch.manual_seed(0)
    out = compiled(qkv)
    torch.manual_seed(0)
    assert torch.equal(out, cpu_attention(qkv, packing, 2, 0.1))
    assert counters["stats"]["unique_graphs"] == 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # e.g. Cooper Lake, Zen 4
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids
        ({"avx2", "avx512f"}, "fp32"),  # AVX-512 without BF16: torch still says AVX512
        ({"avx2"}, "fp32"),
        (set(), "fp32"),  # no /proc/cpuinfo
    ],
)
def test_precision_auto_is_bf16_on_cpus_with_native_bf16_only(monkeypatch, flags, expected):
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))
    assert device.resolve_precision("auto", "cpu") == expected
    assert device.resolve_precision("fp32", "cpu") == "fp32"
    assert device.resolve_precision("bf16", "cpu") == "bf16"  # asked for: emulated if need be


def test_precision_auto_on_cuda_follows_the_devices_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert device.resolve_precision("auto", "cuda") == "fp32"  # e.g. a V100
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert device.resolve_precision("auto", "cuda") == "bf16"
    assert device.resolve_precision("auto", "mps") == "fp32"


def test_precision_auto_plans_bf16_for_a_gpu_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_precision("auto", "cuda") == "bf16"


def test_the_run_logs_which_precision_auto_chose(monkeypatch, caplog):
    from bertpretrain.training.setup import autocast_for

    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx2"}))
    with caplog.at_level("INFO"):
        cfg = compose(["speed.precision=auto"])[0]
        autocast = autocast_for(cfg.speed, torch.device("cpu"), cfg.model.architecture(100))
    assert "precision: fp32 (speed.precision=auto; bf16 is not native on cpu)" in caplog.text
    assert "attention: each sequence padded to its length rounded up" in caplog.text
    with autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_the_optimizer_uses_the_fused_kernel_on_cuda_and_cpu_and_foreach_elsewhere():
    from bertpretrain.training.optimize import make_optimizer, update_kernel

    assert update_kernel("cuda") == update_kernel("cpu") == {"fused": True}
    assert update_kernel("mps") == {"foreach": True}
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, compose([])[0].optim)
    assert optimizer.defaults["fused"] and not optimizer.defaults["foreach"]
