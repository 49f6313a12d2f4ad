"""The speed group does what it says, and only that: the same losses, faster or leaner."""

import pytest
import torch
from conftest import build_wikitext

from bertpretrain.config import compose
from bertpretrain.data.batches import BatchStream
from bertpretrain.distributed import Ranks
from bertpretrain.model import BertConfig, BertForPretraining
from bertpretrain.optimize import PretrainingLosses
from bertpretrain.run_setup import make_module


def test_speed_threads_sets_torchs_threads_and_null_keeps_its_default():
    from bertpretrain.run_setup import apply_threads

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
    compiled = make_module(compose(["speed.compile=true"])[0], model, torch.device("cpu"), Ranks())
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    sum(compiled(batch)).backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    eager = PretrainingLosses(model)(batch)
    sum(eager).backward()
    torch.testing.assert_close(torch.stack(compiled(batch)), torch.stack(eager))
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
