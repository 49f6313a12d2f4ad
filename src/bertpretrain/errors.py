"""The one exception type for mistakes a user can fix (config, data, checkpoint, text)."""

from __future__ import annotations

import argparse
from typing import NoReturn


class UserError(Exception):
    """Raised with a message that says what is wrong and how to fix it.

    The CLI prints it as one line on stderr and exits with code 2; anything else is a bug
    and keeps its traceback.
    """


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the subcommands: a bad flag is a UserError (one line, exit 2), not
    argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see `{self.prog} --help`")
