"""The `bertpretrain` console script: dispatches subcommands, nothing else.

Each command's options and printing live in bertpretrain/commands/<name>.py, imported only
when that command runs. `bertpretrain train ...` is a Hydra app: everything after `train`
reaches Hydra exactly as it would reach a `@hydra.main` program (commands/train.py).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from bertpretrain.commands.fail import fail, report

USAGE = """\
usage: bertpretrain COMMAND [ARGS...]

Pretrain BERT (masked LM + next-sentence prediction) and encode text with it.

commands:
  train    pretrain a model; takes Hydra overrides, e.g. `bertpretrain train model=tiny`
           (`bertpretrain train --help` lists the config groups and options)
  finetune fine-tune a pretrained model on a GLUE task or your own, e.g. `bertpretrain
           finetune task=rte task.dir=glue/RTE init=outputs/latest` (takes Hydra overrides)
  encode   contextual vectors of a sentence or sentence pair from a checkpoint
           (`bertpretrain encode --help`)
  runs     list the runs under outputs/: date, overrides, steps, losses, checkpoint
  export   write a run's model as a Hugging Face transformers folder (BertForPreTraining)
  plan     memory needed by a config (weights, optimizer, activations) and whether it fits
  prepare  tokenise a corpus once into the cache (memory-mapped), ahead of `train`; takes
           train's overrides, e.g. `bertpretrain prepare data=text data.files=[a.txt]`
  glue     the GLUE score table of fine-tuning runs under DIR: median over seeds, the average

Errors you can fix print one line and exit with code 2; a bug prints one line naming the
file that holds its traceback and exits with code 1; set HYDRA_FULL_ERROR=1 to see
tracebacks on the terminal instead.
"""


def _command(name: str) -> Callable[[list[str]], None]:
    """bertpretrain.commands.<name>.main, imported only when that command runs, so that
    each command loads what it needs alone (`encode` never loads Hydra)."""

    def run(argv: list[str]) -> None:
        importlib.import_module(f"bertpretrain.commands.{name}").main(argv)

    return run


def plan_main(argv: list[str]) -> None:
    from bertpretrain.commands.plan import main as plan

    plan(argv)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": _command("train"),
    "finetune": _command("finetune"),
    "encode": _command("encode"),
    "runs": _command("runs"),
    "export": _command("export"),
    "plan": plan_main,
    "prepare": _command("prepare"),
    "glue": _command("glue"),
}


def main(argv: list[str] | None = None) -> None:
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
    except KeyboardInterrupt:
        print("bertpretrain: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `bertpretrain encode ... | head` closed our stdout early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as e:  # every command ends here: one line, never a traceback
        report(e)


if __name__ == "__main__":
    main()
