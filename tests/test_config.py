"""The config's shape: one architecture schema, a speed group apart from the recipe, and
what a resume may change."""

from pathlib import Path

import pytest
import yaml

from bertpretrain.config import to_dict
from bertpretrain.config_compose import compose, conf_dir
from bertpretrain.errors import UserError
from bertpretrain.model.architecture import ARCHITECTURE, BertConfig
from bertpretrain.training.resume import check_resume


def test_every_architecture_setting_of_the_model_group_reaches_the_built_model():
    """The model group is the model's own schema plus a name: each architecture key set on
    the command line is what the model is built with, none dropped, renamed or defaulted."""
    changed = {
        "num_layers": 3,
        "hidden_size": 96,
        "num_heads": 3,
        "ffn_size": 200,
        "dropout": 0.2,
        "max_position": 256,
        "type_vocab_size": 3,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_tanh",
    }
    assert set(changed) == set(ARCHITECTURE)  # a new architecture setting gets a value here
    cfg, _ = compose([f"model.{key}={value}" for key, value in changed.items()])
    assert cfg.model.architecture(1000) == BertConfig(vocab_size=1000, **changed)


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_every_model_yaml_sets_the_whole_architecture(size):
    written = yaml.safe_load((conf_dir() / "model" / f"{size}.yaml").read_text())
    assert set(written) == {"name", *ARCHITECTURE}


def test_the_composed_model_builds_the_architecture_it_names():
    cfg, _ = compose(["model=base", "model.hidden_act=gelu_tanh"])
    built = cfg.model.architecture(30522)
    assert built == BertConfig(30522, 12, 768, 12, 3072, 0.1, 512, 2, 1e-12, "gelu_tanh")


def test_the_vocabulary_size_comes_from_the_tokenizer_not_the_model_group():
    with pytest.raises(UserError, match="model.vocab_size=100: the vocabulary's size comes from"):
        compose(["model.vocab_size=100"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("trainer.precision=bf16", "speed.precision"),
        ("trainer.num_workers=2", "speed.num_workers"),
        ("model.gradient_checkpointing=true", "speed.gradient_checkpointing"),
    ],
)
def test_a_setting_that_moved_to_the_speed_group_names_its_new_home(old, new):
    with pytest.raises(UserError, match=f"is now {new}"):
        compose([old])


def test_a_users_model_file_with_a_moved_setting_names_its_new_home(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "name: mine\nnum_layers: 1\nhidden_size: 64\nnum_heads: 4\nffn_size: 128\n"
        "dropout: 0.1\nmax_position: 128\ngradient_checkpointing: true\n"
    )
    with pytest.raises(UserError, match="model.gradient_checkpointing is now speed"):
        compose([f"hydra.searchpath=[file://{tmp_path}]", "model=mine"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("speed.precision=fp16", "speed.precision='fp16' is unknown; use auto, fp32 or bf16"),
        ("speed.threads=0", "speed.threads=0 is out of range: use a value in .1, "),
        ("speed.num_workers=-1", "speed.num_workers=-1 is out of range: use a value in .0, 256."),
        ("model.hidden_act=relu", "hidden_act 'relu' is not one of gelu, gelu_tanh"),
    ],
)
def test_a_speed_or_architecture_value_that_cannot_work_is_one_clear_error(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        compose([override])


def _saved(*overrides: str) -> dict:
    return {"config": to_dict(compose(list(overrides))[0]), "step": 2}


def test_a_resume_may_change_every_speed_setting():
    saved = _saved("trainer.max_steps=2")
    faster = compose(
        [
            "trainer.max_steps=4",
            "speed.precision=bf16",
            "speed.gradient_checkpointing=true",
            "speed.num_workers=2",
            "speed.compile=true",
            "speed.threads=1",
        ]
    )[0]
    check_resume(Path("ckpt.pt"), saved, to_dict(faster))


@pytest.mark.parametrize(
    "change", ["model.hidden_act=gelu_tanh", "model.layer_norm_eps=1e-5", "model.num_layers=3"]
)
def test_a_resume_refuses_a_change_of_architecture(change):
    saved = _saved("trainer.max_steps=2")
    other = compose(["trainer.max_steps=4", change])[0]
    with pytest.raises(UserError, match=f"cannot resume .*{change.split('=')[0]}"):
        check_resume(Path("ckpt.pt"), saved, to_dict(other))


def test_a_resume_ignores_the_models_label_when_the_architecture_is_the_same():
    saved = _saved("trainer.max_steps=2")
    relabelled = compose(["trainer.max_steps=4", "model.name=mine"])[0]
    check_resume(Path("ckpt.pt"), saved, to_dict(relabelled))


def test_the_default_validation_reads_a_bounded_share_of_the_split():
    """Reading the whole split (eval_batches=0) took 35 s after 11 s of training on CPU."""
    config, _ = compose([])
    assert 0 < config.trainer.eval_batches * config.trainer.batch_size <= 2048
