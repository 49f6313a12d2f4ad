"""`bertpretrain glue DIR`: the GLUE score table (`bertpretrain.score_table.score_table`)
of the fine-tuning runs under DIR."""

from __future__ import annotations

from pathlib import Path

from bertpretrain.errors import ArgumentParser, UserError
from bertpretrain.score_table import FORMATS, format_table, score_table


def main(argv: list[str]) -> None:
    parser = ArgumentParser(
        prog="bertpretrain glue",
        description="The GLUE score table of the fine-tuning runs under DIR: per init and "
        "task the median over seeds, its min and max, and the average of the task scores.",
    )
    parser.add_argument(
        "dir", help="folder of `bertpretrain finetune` runs (searched at any depth)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="text", help="text (default), markdown or json"
    )
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(
            f"{folder} is not a folder; pass the folder that holds your fine-tuning runs"
        )
    print(format_table(score_table(folder), args.format))
