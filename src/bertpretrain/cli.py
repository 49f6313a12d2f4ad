"""The `bertpretrain` console script: dispatches subcommands, nothing else.

`bertpretrain train ...` is a Hydra app: everything after `train` reaches Hydra exactly as
it would reach a `@hydra.main` program (overrides, -m, --cfg job, --help, --config-dir).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from bertpretrain.errors import Interrupted, UserError

log = logging.getLogger("bertpretrain")

USAGE = """\
usage: bertpretrain COMMAND [ARGS...]

Pretrain BERT (masked LM + next-sentence prediction) and encode text with it.

commands:
  train    pretrain a model; takes Hydra overrides, e.g. `bertpretrain train model=tiny`
           (`bertpretrain train --help` lists the config groups and options)
  encode   contextual vectors of a sentence or sentence pair from a checkpoint
           (`bertpretrain encode --help`)
  runs     list the runs under outputs/: date, overrides, steps, losses, checkpoint
  export   write a run's model as a Hugging Face transformers folder (BertForPreTraining)
  plan     memory needed by a config (weights, optimizer, activations) and whether it fits
  prepare  tokenise a corpus once into the cache (memory-mapped), ahead of `train`; takes
           train's overrides, e.g. `bertpretrain prepare data=text data.files=[a.txt]`

Errors you can fix print one line and exit with code 2; set HYDRA_FULL_ERROR=1 to see
the traceback as well.
"""


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


# Terminal escapes (colours copied from another library's message) and other control
# characters never reach the user's terminal or log.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


def fail(message: str) -> NoReturn:
    """One line on stderr and exit code 2: the answer to every user mistake."""
    print(f"bertpretrain: error: {' '.join(_CONTROL.sub('', message).split())}", file=sys.stderr)
    sys.exit(2)


def _precheck(args):
    """Check the config of a run, or of every job of a sweep, before Hydra starts any
    (`args`: Hydra's parsed command line). Returns the single run's composed config.

    Hydra reports a bad override over several lines, and in a sweep only when that job
    starts; composing here first turns each into one line and exit code 2, before any run
    dir or data is touched.
    """
    from bertpretrain import checkpoint
    from bertpretrain.config import compose

    if args.help or args.hydra_help or args.info or args.shell_completion:
        return None  # Hydra answers these itself
    if args.config_path:
        if not os.path.isdir(os.path.abspath(args.config_path)):
            fail(f"--config-path {args.config_path} is not a folder")
        return None  # another primary config: Hydra composes it
    overrides = list(args.overrides)
    if args.config_dir:
        path = os.path.abspath(args.config_dir)
        if not os.path.isdir(path):
            fail(f"--config-dir {args.config_dir} is not a folder")
        overrides.append(f"hydra.searchpath=[file://{path}]")
    name = args.config_name or "config"
    try:
        if args.multirun:
            _check_sweep(overrides, name)
            return None
        _, cfg = compose(overrides, name)
        if cfg.init and not args.cfg:
            _check_init_overrides(overrides, cfg)
        if not args.cfg:
            run_dir = _run_dir(cfg)
            checkpoint.check_not_in_use(run_dir)
        return None if args.cfg else cfg
    except UserError as e:
        if full_errors():
            raise
        fail(str(e))


ARCHITECTURE = ("num_layers", "hidden_size", "num_heads", "ffn_size", "dropout", "max_position")


def _check_init_overrides(overrides: list[str], cfg) -> None:
    """With init=, the architecture is that model's: a `model=` or `model.X=` override that
    asks for another is refused (one that agrees, or a speed setting, passes)."""
    from bertpretrain import published

    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if not any(k == "model" or k.removeprefix("model.") in ARCHITECTURE for k in keys):
        return
    _, arch = published.init_architecture(cfg.init)
    differ = [
        f"model.{k}={getattr(cfg.model, k)}"
        for k in ARCHITECTURE
        if getattr(cfg.model, k) != getattr(arch, k)
    ]
    if differ:
        mine = ", ".join(f"{k} {getattr(arch, k)}" for k in ARCHITECTURE)
        raise UserError(
            f"init={cfg.init} sets the architecture ({mine}), but the overrides ask for "
            f"{', '.join(differ)}; drop the model override"
        )


def _run_dir(cfg) -> Path:
    """The run dir, resolved, and checked to be creatable: a path the OS refuses is one
    line here, not a traceback inside Hydra."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        run_dir = Path(cfg.hydra.run.dir)
    except OmegaConfBaseException as e:
        raise UserError(f"bad config: hydra.run.dir: {str(e).splitlines()[0]}") from None
    _check_writable(run_dir)
    missing = [p for p in (run_dir.absolute(), *run_dir.absolute().parents) if not p.exists()]
    try:  # create it to see that the OS allows it, then leave the creating to Hydra: its
        for folder in reversed(missing):  # ${now:...} may name another second's dir
            folder.mkdir()
    except OSError as e:
        raise UserError(
            f"cannot create the run dir {run_dir}: {e.strerror}; set "
            "hydra.run.dir=SOME/WRITABLE/PATH"
        ) from None
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()
    return run_dir


def _check_sweep(overrides: list[str], config_name: str) -> None:
    """Compose every job of a sweep; one line per job that would fail, then exit 2."""
    from bertpretrain.config import compose, sweep_jobs

    jobs = sweep_jobs(overrides)
    problems = []
    for number, job in enumerate(jobs):
        try:
            compose(job, config_name)
        except UserError as e:
            problems.append(f"sweep job {number} ({' '.join(job)}): {e}")
    if problems:
        if full_errors():
            raise UserError("; ".join(problems))
        for problem in problems:
            print(
                f"bertpretrain: error: {' '.join(_CONTROL.sub('', problem).split())}",
                file=sys.stderr,
            )
        sys.exit(2)


def _check_writable(run_dir: Path) -> None:
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(
            f"cannot write the run dir {run_dir}: {existing} is not a writable folder; "
            "run from a writable folder or set hydra.run.dir=SOME/WRITABLE/PATH"
        )


def _one_run_dir_for_all_ranks(argv: list[str], cfg) -> list[str]:
    """Under torchrun: every rank writes into rank 0's run dir, and only rank 0 leaves
    Hydra's logs and .hydra folder there."""
    from bertpretrain import distributed

    if cfg is None:
        fail("under torchrun, `train` takes overrides only (no -m sweeps, --cfg or --help)")
    ranks = distributed.init_from_env()
    run_dir = distributed.broadcast_str(
        str(Path(cfg.hydra.run.dir).absolute()) if ranks.main else None
    )
    argv = [a for a in argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]
    if not ranks.main:
        argv += [
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
    return argv


def train_main(argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from bertpretrain import distributed
    from bertpretrain.config import conf_dir, register_configs, to_config, without_hydra

    register_configs()
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    cfg = _precheck(args)
    from bertpretrain.train import train  # torch & co. only once the config is known good

    if distributed.launched_by_torchrun():
        argv = _one_run_dir_for_all_ranks(argv, cfg)

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def run(cfg: DictConfig) -> None:
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        overrides = " ".join(hc.overrides.task) or "(defaults)"
        run_dir = Path(hc.runtime.output_dir)
        try:
            config = to_config(without_hydra(cfg))
            record = _record(run_dir, without_hydra(cfg), hc)
            train(config, run_dir, record)
        except Interrupted as e:
            print(f"bertpretrain: {e}", file=sys.stderr)
            sys.exit(e.exit_code)  # a stopped sweep stops: the user asked for it
        except UserError as e:
            if full_errors():
                raise
            if not multirun:
                fail(str(e))
            log.error("job %s (%s) failed: %s", hc.job.num, overrides, e)
            _report_failure(hc.job.num, f"job {hc.job.num} ({overrides}): {e}")
        except Exception as e:
            if not multirun:
                raise
            # A sweep survives a failing job: keep its traceback in the job's log, go on.
            log.exception("job %s (%s) failed", hc.job.num, overrides)
            _report_failure(hc.job.num, f"job {hc.job.num} ({overrides}): {type(e).__name__}: {e}")

    sys.argv = [sys.argv[0], *argv]
    with _failure_reports(bool(args.multirun)) as failures:
        try:
            run()
        finally:
            distributed.shutdown()
    if failures:
        fail(f"{len(failures)} sweep job(s) failed: " + "; ".join(failures))


def _record(run_dir: Path, cfg, hc) -> Callable[[], None]:
    """What Hydra writes into .hydra/ at a job's start, for `train` to write once the run
    is accepted: written earlier, a refused run would replace another run's record."""
    from omegaconf import OmegaConf

    from bertpretrain import files, rundir

    texts = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": OmegaConf.to_container(hc)}),
        "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task)),
    }

    def write() -> None:
        folder = run_dir / rundir.RECORD
        folder.mkdir(exist_ok=True)
        for name, text in texts.items():
            files.atomic_write(folder / name, lambda f, text=text: f.write(text.encode()))

    return write


FAILURES = "BERTPRETRAIN_SWEEP_FAILURES"  # the folder where a sweep's failing jobs report


@contextlib.contextmanager
def _failure_reports(multirun: bool) -> Iterator[list[str]]:
    """A folder for a sweep's failed jobs to report into, whichever launcher runs them: in
    this process, in joblib's worker processes (which inherit the environment) or in SLURM
    jobs (on a shared filesystem, hence a folder here rather than in /tmp). Yields the
    list that holds the reports once the sweep is over."""
    reports: list[str] = []
    if not multirun:
        yield reports
        return
    try:
        folder = Path(tempfile.mkdtemp(prefix=".bertpretrain-sweep-", dir="."))
    except OSError:  # a read-only working directory: local launchers still reach /tmp
        folder = Path(tempfile.mkdtemp(prefix="bertpretrain-sweep-"))
    os.environ[FAILURES] = str(folder.absolute())
    try:
        yield reports
    finally:
        os.environ.pop(FAILURES, None)
        found = sorted(folder.glob("*.txt"), key=lambda p: int(p.stem))
        reports += [p.read_text(encoding="utf-8").strip() for p in found]
        shutil.rmtree(folder, ignore_errors=True)


def _report_failure(job: int, message: str) -> None:
    folder = os.environ.get(FAILURES)
    if folder:
        (Path(folder) / f"{job}.txt").write_text(" ".join(message.split()), encoding="utf-8")


def encode_main(argv: list[str]) -> None:
    from bertpretrain.encode import main as encode

    encode(argv)


def export_main(argv: list[str]) -> None:
    from bertpretrain.export import main as export

    export(argv)


def plan_main(argv: list[str]) -> None:
    from bertpretrain.commands.plan import main as plan

    plan(argv)


def prepare_main(argv: list[str]) -> None:
    """`bertpretrain prepare OVERRIDES`: the corpus and vocabulary that `train OVERRIDES`
    would use, tokenised into the cache now (on a CPU machine, before a GPU job)."""
    from bertpretrain.config import compose
    from bertpretrain.data import prepare
    from bertpretrain.errors import ArgumentParser
    from bertpretrain.plan import peak_memory

    parser = ArgumentParser(
        prog="bertpretrain prepare",
        description="Tokenise the corpus that `bertpretrain train OVERRIDES` would read into "
        "the cache (data.root/cache), once: memory-mapped token arrays that train then opens "
        "in a moment. Takes the same overrides as train.",
        epilog="example: bertpretrain prepare data=text data.files=[big.txt] tokenizer=wordpiece",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for train")
    args = parser.parse_args(argv)
    cfg = compose(args.overrides)[0]
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="[%(asctime)s][%(name)s] %(message)s"
    )
    tokenizer = None
    if cfg.init:  # the corpus is prepared with that model's vocabulary
        from bertpretrain import published

        tokenizer = published.init_tokenizer(published.init_architecture(cfg.init)[0])
    store = prepare(cfg.data, cfg.tokenizer, tokenizer)
    valid = f", {len(store.valid.tokens)} validation tokens" if store.valid is not None else ""
    print(
        f"prepared corpus: {store.path} ({len(store.train.tokens)} training tokens{valid}, "
        f"vocabulary {len(store.tokenizer.vocab)}); peak memory "
        f"{peak_memory() >> 20} MiB"
    )


def runs_main(argv: list[str]) -> None:
    from bertpretrain.runs import main as runs

    runs(argv)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": train_main,
    "encode": encode_main,
    "runs": runs_main,
    "export": export_main,
    "plan": plan_main,
    "prepare": prepare_main,
}


# glibc's allocator serves freed tensors' memory from its heap once large blocks have
# been freed (its mmap threshold adapts upwards), and training frees tensors of a new size
# every step (the real-token count varies): the heap fragments, and the resident memory of
# a tiny run grew from 1.1 GB to 10 GB over 1000 steps, far past the memory plan. A fixed
# threshold gives every large tensor its own mapping, returned on free; huge pages keep
# those mappings' page faults cheap. glibc reads these tunables only at start-up, hence
# the re-exec; setting the threshold with mallopt() instead cost 27% of the tiny run's
# speed against these settings' 12% (docs/benchmarks.md).
MALLOC_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=131072"


def _bounded_allocator() -> None:
    """Restart this process once under MALLOC_TUNABLES (see above); a GLIBC_TUNABLES of the
    user's own is kept as it is, and so is a process that is not a console script's."""
    import platform

    if (
        "GLIBC_TUNABLES" in os.environ
        or not sys.platform.startswith("linux")
        or platform.libc_ver()[0] != "glibc"
        or not getattr(sys, "orig_argv", None)
    ):
        return
    os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def main(argv: list[str] | None = None) -> None:
    if argv is None and sys.argv[1:2] == ["train"]:
        _bounded_allocator()  # the `bertpretrain train` process, not a test's call of main
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        fail(
            f"unknown command {argv[0]!r}; use one of: {', '.join(COMMANDS)} (see bertpretrain --help)"
        )
    try:
        command(argv[1:])
    except UserError as e:
        if full_errors():
            raise
        fail(str(e))
    except KeyboardInterrupt:
        print("bertpretrain: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `bertpretrain encode ... | head` closed our stdout early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
