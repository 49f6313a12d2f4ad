"""Every core on a stream of chunks: what prepare uses to count and tokenise a corpus.

`imap(fn, state, chunks)` yields `fn(state, chunk)` for each chunk, in order. The first
chunks run in this process; a stream that proves long (a corpus larger than WikiText-2)
moves to one worker process per core, each given `state` (the tokenizer) once, while this
process goes on reading the corpus. At most two chunks per worker are in flight, so
memory stays bounded however long the stream is (`Pool.imap` and `Executor.map` would read
the whole input ahead).

Workers are spawned, not forked: the caller may hold threads (torch's, a process group's)
whose locks a forked child would inherit held.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

SERIAL_CHUNKS = 16  # WikiText-2 is 9 to 10 chunks: spawning workers would cost more than it saves
# Beyond this many workers the one process that reads the corpus is the bottleneck (reading
# and splitting WikiText runs at about a fifth of the speed of tokenising it).
MAX_WORKERS = 8
IN_FLIGHT = 2  # chunks queued per worker: one running, one ready

log = logging.getLogger(__name__)

_state: Any = None  # a worker's copy of the caller's state


def workers() -> int:
    """The cores this process may run on (its affinity, which a scheduler may restrict)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_WORKERS)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def imap(
    fn: Callable[[S, T], R], state: S, chunks: Iterable[T], processes: int | None = None
) -> Iterator[R]:
    """`fn(state, chunk)` for every chunk, in order; `fn` must be a module-level function
    and `state` picklable."""
    processes = workers() if processes is None else processes
    if not _spawnable():
        processes = 1
    it = iter(chunks)
    for chunk in itertools.islice(it, SERIAL_CHUNKS if processes > 1 else None):
        yield fn(state, chunk)
    first = next(it, None)
    if first is None:
        return
    context = multiprocessing.get_context("spawn")
    pending: collections.deque = collections.deque()  # chunks not yet yielded, oldest first
    futures: collections.deque = collections.deque()  # their results
    with ProcessPoolExecutor(processes, context, initializer=_init, initargs=(state,)) as pool:
        try:
            for chunk in itertools.chain([first], it):
                pending.append(chunk)
                futures.append(pool.submit(_call, fn, chunk))
                if len(futures) >= IN_FLIGHT * processes:
                    yield futures[0].result()
                    futures.popleft()
                    pending.popleft()
            while futures:
                yield futures[0].result()
                futures.popleft()
                pending.popleft()
        except BrokenProcessPool as e:
            # A worker was killed (the OOM killer): finish here, slower but whole.
            log.warning("worker processes failed (%s); going on in this process", e)
        finally:
            pool.shutdown(cancel_futures=True)
    for chunk in pending:
        yield fn(state, chunk)
    for chunk in it:
        yield fn(state, chunk)


def _spawnable() -> bool:
    """Whether a spawned worker can re-import __main__, as spawn does: not a script piped
    to stdin (`python - < script.py`)."""
    path = getattr(sys.modules["__main__"], "__file__", None)
    return path is None or os.path.exists(path)


def _init(state: Any) -> None:
    global _state
    # One process per core already: the `tokenizers` library's own threads would compete.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _state = state


def _call(fn: Callable, chunk: Any) -> Any:
    return fn(_state, chunk)
