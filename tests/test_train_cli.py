"""End-to-end: `bertpretrain train`, its run dirs, logs and checkpoints, and the commands
around it. The shared tiny run and the sweeps are real processes; single commands run
in-process through `cli.main` (see conftest's `bertpretrain`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_ARGS, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertpretrain.training import checkpoint

TRAIN_SCALARS = {"train/mlm_loss", "train/nsp_loss", "train/loss", "train/lr", "train/seq_per_s"}
VAL_SCALARS = {"val/mlm_loss", "val/mlm_acc", "val/nsp_loss", "val/nsp_acc", "val/token_spread"}


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_writes_tensorboard_curves_for_mlm_nsp_and_validation(tiny_run):
    curves = scalars(tiny_run)
    assert set(curves) >= TRAIN_SCALARS | VAL_SCALARS
    assert [s for s, _ in curves["train/mlm_loss"]] == [2, 4, 6]  # log_every=2, max_steps=6
    assert [s for s, _ in curves["val/mlm_loss"]] == [6]
    for _, value in curves["train/mlm_loss"] + curves["train/nsp_loss"]:
        assert 0 < value < 20


def test_token_spread_is_the_std_over_real_tokens_and_ignores_padding():
    from bertpretrain.training.evaluate import token_spread

    g = torch.Generator().manual_seed(0)
    varied = torch.randn(2, 6, 64, generator=g)  # (B, L, H)
    same = varied[:, :1].expand(-1, 6, -1).clone()
    lens = torch.tensor([6, 4])
    spread = token_spread(varied, lens)
    assert spread.shape == (2,)
    assert float(spread.min()) > 0.8 and float(spread.max()) < 1.2  # unit-variance noise
    assert token_spread(same, lens).abs().max() < 1e-6
    same[1, 4:] = 100.0  # padding positions: must not count
    assert token_spread(same, lens)[1] < 1e-6


def test_the_default_recipe_keeps_the_tokens_of_an_input_apart(tiny_run):
    """The default optim must not collapse the encoder (issue #19): at the reference's
    Adam 0.01 these same 6 steps give a spread of 0.004."""
    spread = scalars(tiny_run)["val/token_spread"][-1][1]
    assert spread > 0.3
    assert "almost the same vector" not in (tiny_run / "train.log").read_text()
    assert checkpoint.load(checkpoint.list_checkpoints(tiny_run)[-1])["val_metrics"] == {
        **{k.removeprefix("val/"): pytest.approx(v[-1][1]) for k, v in scalars(tiny_run).items()
           if k.startswith("val/")},
        "step": 6,
    }  # fmt: skip


@pytest.mark.slow
def test_a_collapsed_run_says_so_in_its_log_and_encode_warns_about_it(
    collapsed_run, tmp_path, cli_env
):
    """optim=d2l (the reference's Adam 0.01) collapses this architecture; the run and every
    later encode must say so rather than hand out identical vectors silently."""
    spread = scalars(collapsed_run)["val/token_spread"][-1][1]
    assert spread < 0.01
    log = (collapsed_run / "train.log").read_text()
    assert "almost the same vector to every token" in log and "optim.lr" in log
    result = run_cli(
        ["encode", "a crane is flying", "--checkpoint", str(collapsed_run)], tmp_path, cli_env
    )
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("bertpretrain: warning: ") and "collapsed" in warning
    assert "tokens" in result.stdout  # the vectors are still printed


def test_encode_does_not_warn_about_a_healthy_run(tiny_run, tmp_path, bertpretrain):
    result = bertpretrain(["encode", "a crane is flying", "--checkpoint", str(tiny_run)], tmp_path)
    assert result.code == 0 and result.err == ""
    assert "tokens" in result.out


def test_training_leaves_a_checkpoint_that_loads_into_the_model(tiny_run):
    from bertpretrain.model.bert import BertConfig, BertForPretraining

    path = checkpoint.list_checkpoints(tiny_run)[-1]
    state = checkpoint.load(path)
    assert state["step"] == 6
    assert state["vocab"][:5] == ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"]
    assert state["config"]["model"]["hidden_size"] == 128
    model = BertForPretraining(BertConfig(**state["model_config"]))
    model.load_state_dict(state["model"])  # strict: every weight present, none extra
    assert isinstance(state["rng"]["torch"], torch.Tensor)


@pytest.mark.slow
def test_training_losses_fall_on_real_data(tmp_path, bertpretrain, wikitext_dir):
    args = [a for a in TINY_ARGS if not a.startswith(("trainer.max_steps", "trainer.log_every"))]
    result = bertpretrain(
        ["train", *args, "trainer.max_steps=16", "trainer.log_every=4", "hydra.run.dir=run"],
        tmp_path,
    )
    assert result.code == 0, result.err[-2000:]
    mlm = [v for _, v in scalars(tmp_path / "run")["train/mlm_loss"]]
    assert mlm[-1] < mlm[0] - 1.0, mlm


def test_run_writes_everything_under_its_run_dir_and_summarises(
    tmp_path, bertpretrain, wikitext_dir
):
    result = bertpretrain(["train", *TINY_ARGS, "trainer.max_steps=2"], tmp_path)
    assert result.code == 0, result.err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # cwd left clean
    (run_dir,) = list((tmp_path / "outputs").glob("2*/*"))  # date/time
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()
    assert (tmp_path / "outputs" / "latest").resolve() == run_dir.resolve()
    log = (run_dir / "train.log").read_text()
    assert "parameters" in log and "done: 2 steps" in log and "checkpoint" in log


@pytest.mark.slow
def test_multirun_sweep_makes_one_run_dir_per_job(tmp_path, bertpretrain, wikitext_dir):
    args = [a for a in TINY_ARGS if not a.startswith("trainer.max_steps")]
    result = bertpretrain(
        ["train", "-m", *args, "trainer.max_steps=2", "optim.lr=1e-3,1e-2"], tmp_path
    )
    assert result.code == 0, result.err[-2000:]
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = []
    for job in jobs:
        assert checkpoint.list_checkpoints(job), job
        lrs.append(checkpoint.load(checkpoint.list_checkpoints(job)[-1])["config"]["optim"]["lr"])
    assert lrs == [1e-3, 1e-2]


def test_hydras_internal_parser_reads_the_flags_train_relies_on():
    """`train` reads its command line with Hydra's internal parser (commands/train.py says
    why no public API serves): this fails if that parser stops reading these the same way."""
    from bertpretrain.commands.train import parse_hydra_args

    swept = parse_hydra_args(["-m", "model=tiny", "optim.lr=1e-3,1e-2"])
    assert swept.multirun and swept.overrides == ["model=tiny", "optim.lr=1e-3,1e-2"]
    assert not swept.help and swept.cfg is None and swept.config_dir is None
    shown = parse_hydra_args(["--cfg", "job", "model=base", "--config-dir", "mine"])
    assert shown.cfg == "job" and shown.config_dir == "mine" and shown.overrides == ["model=base"]
    assert not shown.multirun and shown.config_path is None and shown.config_name is None
    assert parse_hydra_args(["--help"]).help and parse_hydra_args(["--hydra-help"]).hydra_help
    assert parse_hydra_args(["--info"]).info == "all"
    assert not parse_hydra_args(["-sc"]).help and parse_hydra_args(["-sc"]).shell_completion
    named = parse_hydra_args(["-cp", "elsewhere", "-cn", "other", "-cd", "mine", "x=1"])
    assert (named.config_path, named.config_name, named.config_dir) == (
        "elsewhere",
        "other",
        "mine",
    )
    assert named.overrides == ["x=1"]


def test_help_and_cfg_job_work_like_a_hydra_app(tmp_path, bertpretrain):
    top = bertpretrain(["--help"], tmp_path)
    assert top.code == 0 and "train" in top.out and "encode" in top.out
    helped = bertpretrain(["train", "--help"], tmp_path)
    assert helped.code == 0
    assert "model: base, large, tiny" in helped.out
    cfg = bertpretrain(["train", "--cfg", "job", "model=base", "data.max_len=512"], tmp_path)
    assert cfg.code == 0, cfg.err
    assert "hidden_size: 768" in cfg.out and "max_len: 512" in cfg.out
    assert not (tmp_path / "outputs").exists()


def test_user_config_dir_adds_a_model_named_after_its_file(tmp_path, bertpretrain):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "mini.yaml").write_text(  # no `name:` key
        "num_layers: 1\nhidden_size: 64\nnum_heads: 4\nffn_size: 128\n"
        "dropout: 0.1\nmax_position: 128\n"
    )
    args = ["--config-dir", str(tmp_path / "mine"), "model=mini"]
    result = bertpretrain(["train", *args, "--cfg", "job"], tmp_path)
    assert result.code == 0, result.err
    assert "hidden_size: 64" in result.out
    planned = bertpretrain(["plan", *args, "trainer.device=cpu"], tmp_path)
    assert planned.code == 0, planned.err
    assert "mini" in planned.out


MODELS = ("tiny", "base", "large")
# The installed package composes each set of overrides (argv) with `train --cfg job`, all in
# one process: a process each would pay torch's import ten times.
COMPOSE_EACH = """
import sys
from bertpretrain import cli, config_compose
print(config_compose.conf_dir())
for overrides in sys.argv[1:]:
    print("=== " + overrides, flush=True)
    cli.main(["train", "--cfg", "job", *overrides.split()])
"""


@pytest.mark.slow
def test_installed_wheel_ships_and_composes_every_config(tmp_path, cli_env):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.fail(f"building the wheel failed: {built.stderr[-2000:]}")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    conf = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert [f"bertpretrain/{c}" for c in conf] == sorted(n for n in names if n.endswith(".yaml"))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    shown = {f"model={m} optim={o}": f"name: {m}" for m in MODELS for o in ("adam", "adamw")}
    shown |= {
        "data=text data.files=[a.txt]": "source: text",
        "data=hf data.name=Salesforce/wikitext": "source: hf",
        "tokenizer=wordpiece": "name: wordpiece",
    }
    result = subprocess.run(
        [sys.executable, "-c", COMPOSE_EACH, *shown],
        cwd=tmp_path,
        env=dict(cli_env, PYTHONPATH=str(target)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    where, *sections = result.stdout.split("=== ")
    assert Path(where.strip()).is_relative_to(target)  # the wheel's configs, not conf/
    for section, (overrides, expected) in zip(sections, shown.items(), strict=True):
        assert section.startswith(f"{overrides}\n") and expected in section, section


@pytest.mark.slow
def test_parallel_launcher_runs_sweep_jobs_in_their_own_processes(tmp_path, cli_env, wikitext_dir):
    pytest.importorskip(
        "hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'"
    )
    args = [a for a in TINY_ARGS if not a.startswith("trainer.max_steps")]
    result = run_cli(
        [
            "train",
            "-m",
            "hydra/launcher=parallel",
            *args,
            "trainer.max_steps=1",
            "trainer.seed=1,2",
        ],
        tmp_path,
        cli_env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    assert all(checkpoint.list_checkpoints(j) for j in jobs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # no report folder left


@pytest.mark.slow
def test_a_job_failing_in_a_worker_process_still_fails_the_sweep(tmp_path, cli_env):
    """joblib runs jobs in other processes: their failures must reach the final line."""
    pytest.importorskip(
        "hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'"
    )
    args = [a for a in TINY_ARGS if not a.startswith(("trainer.max_steps", "data.train_split"))]
    result = run_cli(
        ["train", "-m", "hydra/launcher=parallel", *args, "trainer.max_steps=1"]
        + ["data.train_split=nosuchsplit,valid", "hydra.sweep.dir=sweep"],
        tmp_path,
        cli_env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "1 sweep job(s) failed: job 0 (" in last and "data.train_split=nosuchsplit" in last
    assert "wiki.nosuchsplit.tokens" in last
    assert checkpoint.list_checkpoints(tmp_path / "sweep" / "1")  # the other job ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_runs_lists_finished_runs_with_overrides_losses_and_checkpoint(tiny_run, bertpretrain):
    import json

    cwd = tiny_run.parent.parent  # tiny_run is <cwd>/outputs/tiny
    listed = bertpretrain(["runs", "--json"], cwd)
    assert listed.code == 0, listed.err
    (row,) = [r for r in json.loads(listed.out) if r["run"] == str(tiny_run.resolve())]
    assert row["finished"] and row["steps"] == 6
    assert "trainer.max_steps=6" in row["overrides"]
    assert 0 < row["train_mlm_loss"] < 20 and 0 < row["val_nsp_loss"] < 5
    assert row["checkpoint"].endswith("step_00000006.pt")
    table = bertpretrain(["runs"], cwd)
    assert table.code == 0 and str(tiny_run.resolve()) in table.out
