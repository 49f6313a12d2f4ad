"""The one error boundary of every command: what the user can fix is one line on stderr and
exit code 2; anything else is a bug, one line naming the file that holds its traceback,
exit code 1. `report` is the only place that tells the two apart (`user_message`).

Nothing here imports omegaconf or Hydra: `encode` never loads them, and an exception of
theirs can only reach `report` once they are loaded.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import time
import traceback
from typing import NoReturn

from bertpretrain.errors import UserError

# Terminal escapes (colours copied from another library's message) and other control
# characters never reach the user's terminal or log.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")

# What the OS says about a path the user gave, and what they can do about it.
PATH_FIXES = {
    errno.ENAMETOOLONG: "use a shorter path (the system limits each name and the whole path)",
    errno.EACCES: "check its permissions, or give a path you can use",
    errno.EPERM: "check its permissions, or give a path you can use",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is not a folder; check the path",
    errno.EISDIR: "it is a folder; give a file",
    errno.ELOOP: "it is a symlink loop; point the link at a real file",
    errno.EROFS: "the filesystem is read-only; give a path on a writable one",
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free space or write elsewhere",
    errno.ENXIO: "it is not a regular file; give one",
    errno.ENODEV: "it is not a regular file; give one",
    errno.EINVAL: "the system refuses this path; give another",
    errno.EXDEV: "it is on another filesystem; give a path next to the target",
    errno.EEXIST: "it is in the way; remove it or give another path",
    errno.ENOTEMPTY: "it is in the way; remove it or give another path",
    errno.EIO: "the device reports an I/O error; give a file on a working disk",
}
_CONFIG_LIBRARIES = ("omegaconf", "hydra")


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


def user_message(error: BaseException) -> str | None:
    """The line for an error that the user's input caused (a UserError, a path the OS
    refuses, a config Hydra or OmegaConf cannot compose); None for a bug."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.errno in PATH_FIXES and error.filename is not None:
        path = os.fsdecode(error.filename)
        shown = path if len(path) <= 120 else f"{path[:60]}...{path[-40:]} ({len(path)} characters)"
        return f"{shown}: {error.strerror}; {PATH_FIXES[error.errno]}"
    if type(error).__module__.split(".")[0] in _CONFIG_LIBRARIES:
        from bertpretrain.config_compose import one_line  # loaded: the error came from there

        return f"bad config: {one_line(error)}; see `bertpretrain train --help`"
    return None


def report(error: BaseException) -> NoReturn:
    """End the command on `error` (`exit_on`); HYDRA_FULL_ERROR=1 re-raises it instead."""
    if full_errors():
        raise error
    exit_on(error)


def exit_on(error: BaseException) -> NoReturn:
    """`error`'s one line and exit 2, or, for a bug, one line naming the file that holds
    the traceback and exit 1."""
    message = user_message(error)
    if message is not None:
        fail(message)
    where = _write_traceback(error)
    summary = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    print_error(
        f"this is a bug in bertpretrain, not in what you gave ({summary}); {where}; please "
        "report it with that file"
    )
    sys.exit(1)


def _write_traceback(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    name = f"bertpretrain-bug-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path = os.path.join(tempfile.gettempdir(), name)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"bertpretrain {' '.join(sys.argv[1:])}\n\n{text}")
    except OSError as e:
        return f"the traceback could not be written to {path} ({e.strerror}): rerun with HYDRA_FULL_ERROR=1 to see it"
    return f"the full traceback is in {path}"
