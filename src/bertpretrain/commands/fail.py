"""How a command fails on a mistake the user can fix: one line on stderr and exit code 2
(bertpretrain.errors.UserError says what and how to fix it; this prints it)."""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

# Terminal escapes (colours copied from another library's message) and other control
# characters never reach the user's terminal or log.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


def full_errors() -> bool:
    """Whether the user asked for tracebacks (Hydra's own switch, for every command)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def print_error(message: str) -> None:
    """`message` as one clean line on stderr."""
    print(f"bertpretrain: error: {' '.join(_CONTROL.sub('', message).split())}", file=sys.stderr)


def fail(message: str) -> NoReturn:
    """One line on stderr and exit code 2: the answer to every user mistake."""
    print_error(message)
    sys.exit(2)
