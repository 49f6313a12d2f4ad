"""Property-based tests (Hypothesis) of the CLI's promise: whatever the input, a command
exits 0, or exits 2 with exactly one `bertpretrain: error:` line; never a traceback, and
no file that was there before is changed.

The overrides cover every key of the schema, found by walking the dataclasses of
config.py (a new key is fuzzed without touching this file): values in and out of their
range (config_ranges.RANGES), of the wrong type, odd strings and interpolations. The paths
are odd ones (devices, names over the system's limits, dangling links, empty or garbage
files, folders) given to every command's path argument. The commands stop before any
training (`train --cfg job`, `plan`, or an input refused before the data is read), in
this process (`cli.main`), so each example takes a fraction of a second. Examples are
derandomized and there is no example database: every run tries the same inputs.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from conftest import TINY_ARGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import snapshot

from bertpretrain.config import DATA_SCHEMAS, Config, FinetuneConfig
from bertpretrain.config_ranges import RANGES
from bertpretrain.training import checkpoint

OVERRIDE_EXAMPLES = 60
PATH_EXAMPLES = 40


def bounded(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


REFUSED_WHENEVER_SET = {"model.vocab_size"}  # the tokenizer decides it: any value is refused


def schema_keys(root: type = Config) -> list[tuple[tuple[str, ...], str, object]]:
    """(overrides that select the key's schema, dotted key, annotated type) for every leaf
    of `root` (Config or FinetuneConfig): Config's `data` walks each corpus's schema,
    selected with `data=SOURCE`."""
    found = []

    def walk(cls: type, prefix: str, select: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            kind = hints[f.name]
            if is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.", select)
            elif f"{prefix}{f.name}" == "data" and root is Config:
                for source, schema in DATA_SCHEMAS.items():
                    walk(schema, "data.", (f"data={source}",))
            else:
                found.append((select, f"{prefix}{f.name}", kind))

    walk(root, "", ())
    return found


KEYS = schema_keys()
FINETUNE_KEYS = schema_keys(FinetuneConfig)


def _base(kind: object) -> set[type]:
    """The plain types an annotation allows (`int | None` -> {int, NoneType})."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return {typing.get_origin(a) or a for a in typing.get_args(kind)}
    return {typing.get_origin(kind) or kind}


def test_every_number_of_the_schema_has_a_range():
    numbers = {key for _, key, kind in KEYS + FINETUNE_KEYS if _base(kind) & {int, float}}
    assert numbers - REFUSED_WHENEVER_SET - set(RANGES) == set()
    assert set(RANGES) <= numbers  # no range for a key that is gone


ODD_STRINGS = ["", " ", "abc", "-1", "1e400", "nan", "inf", "-inf", "true", "null", "[]", "{}"]
ODD_STRINGS += ["[1,2]", "'quoted'", '"x y"', "0x10", "1_000", "${nope.key}", "${oc.env:NOPE_F}"]
ODD_STRINGS += ["${trainer.seed}", "${oc.env:HOME}", "café", "a=b", "a,b", "~", "/dev/null"]
ODD_STRINGS += ["'${oc.env:HOME}'", "x" * 300, "\\t", "-m", "--cfg"]


def _number(key: str, kind: set[type]) -> st.SearchStrategy[str]:
    bounds = RANGES.get(key)
    if bounds is None:
        return st.sampled_from(["0", "1", "-1"])
    low, high = bounds.low, min(bounds.upper(), bounds.low + 2000)
    if int in kind:
        inside = st.integers(int(low), int(high))
        beyond = [int(low) - 1, int(bounds.upper()) + 1, 10**30, -(10**30), 2**63, 2**64]
        return st.one_of(inside, st.sampled_from(beyond)).map(str)
    inside = st.floats(low, high, allow_nan=False)
    beyond = st.sampled_from([low - 1.0, bounds.upper() * 2 + 1, 1e308, -1e308])
    return st.one_of(inside, beyond).map(repr)


@st.composite
def override(draw, keys=KEYS) -> list[str]:
    """A schema key's selection overrides plus `key=value`."""
    select, key, annotation = draw(st.sampled_from(keys))
    kind = _base(annotation)
    values = [st.sampled_from(ODD_STRINGS), st.text(st.characters(codec="ascii"), max_size=12)]
    if kind & {int, float}:
        values.append(_number(key, kind))
    if bool in kind:
        values.append(st.sampled_from(["true", "false", "maybe", "1", "yes"]))
    value = draw(st.one_of(*values))
    return [*select, f"{key}={value}"]


def kept_the_promise(result) -> None:
    assert "Traceback" not in result.err + result.out, result.err[-2000:]
    if result.code != 0:
        result.error_line()  # exit 2, one `bertpretrain: error:` line


@pytest.fixture
def folder(tmp_path) -> Path:
    """A working folder holding files a command must leave alone."""
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    (tmp_path / "outputs" / "old" / checkpoint.SUBDIR).mkdir(parents=True)
    (tmp_path / "outputs" / "old" / "summary.json").write_text("{}\n")
    return tmp_path


@bounded(OVERRIDE_EXAMPLES)
@given(
    command=st.sampled_from([("train", "--cfg", "job"), ("plan",)]),
    overrides=st.lists(override(), min_size=1, max_size=3),
)
def test_any_override_of_any_key_is_accepted_or_one_error_line(
    command, overrides, folder, bertpretrain
):
    before = snapshot(folder)
    argv = [*command, *(word for group in overrides for word in group)]
    kept_the_promise(bertpretrain(argv, folder))
    assert snapshot(folder) == before


@bounded(OVERRIDE_EXAMPLES)
@given(overrides=st.lists(override(FINETUNE_KEYS), min_size=1, max_size=3))
def test_any_override_of_any_finetune_key_is_accepted_or_one_error_line(
    overrides, folder, bertpretrain
):
    before = snapshot(folder)
    argv = ["finetune", "--cfg", "job", *(word for group in overrides for word in group)]
    kept_the_promise(bertpretrain(argv, folder))
    assert snapshot(folder) == before


def odd_paths(root: Path) -> dict[str, str]:
    """Paths that are not what a command expects, built under `root` (the working dir)."""
    if not (root / "afolder").exists():
        (root / "empty.pt").write_bytes(b"")
        (root / "garbage.pt").write_bytes(b"PK\x03\x04 not really a zip" * 10)
        (root / "afolder").mkdir()
        (root / "run" / checkpoint.SUBDIR).mkdir(parents=True)
        (root / "dangling").symlink_to(root / "gone")
        (root / "loop").symlink_to("loop")
    odd = {name: str(root / name) for name in ("empty.pt", "garbage.pt", "afolder", "run")}
    odd |= {name: name for name in ("dangling", "loop", "", " ", "-", "nope", "a,b", "a=b")}
    odd |= {"checkpoints": str(root / "run" / checkpoint.SUBDIR), "long": "x" * 300}
    odd |= {"over PATH_MAX": "/".join(["d" * 200] * 25), "devnull": "/dev/null"}
    odd |= {"devzero": "/dev/zero", "proc": "/proc/self/x", "newline": "a\nb"}
    odd |= {"not utf-8": os.fsdecode(b"caf\xe9"), "interpolation": "${nope.key}"}
    return odd


PATH_COMMANDS = [
    ("encode", "hi", "--checkpoint", "{}"),
    ("encode", "--file", "{}", "--checkpoint", "nope.pt"),
    ("export", "{}", "exported"),
    ("train", *TINY_ARGS, "init={}", "hydra.run.dir=new-run"),
    ("train", *TINY_ARGS, "trainer.resume={}", "hydra.run.dir=new-run"),
    ("train", *TINY_ARGS, "data.dir={}", "data.valid_split=null", "hydra.run.dir=new-run"),
    ("finetune", "task.dir={}", "hydra.run.dir=new-run"),
    ("finetune", "task=csv", "task.dir={}", "task.text_a=a", "task.label=b", "hydra.run.dir=r"),
    ("finetune", "task.dir=afolder", "init={}", "hydra.run.dir=new-run"),
]


@bounded(PATH_EXAMPLES)
@given(command=st.sampled_from(PATH_COMMANDS), which=st.integers(0, 63))
def test_an_odd_path_given_to_any_command_is_one_error_line(command, which, folder, bertpretrain):
    paths = odd_paths(folder)
    path = paths[sorted(paths)[which % len(paths)]]
    before = snapshot(folder)
    kept_the_promise(bertpretrain([arg.replace("{}", path) for arg in command], folder))
    after = snapshot(folder)
    assert {name: after.get(name) for name in before} == before
