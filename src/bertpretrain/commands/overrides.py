"""Overrides written for Hydra by `train` itself (the fixed run dir, a resumed run's
settings), quoted so that Hydra's grammar reads every value back unchanged."""

from __future__ import annotations

from hydra.core.override_parser.types import Quote, QuotedString


def override(key: str, value: object) -> str:
    return f"{key}={hydra_value(value)}"


def hydra_value(value: object) -> str:
    """A YAML value (null, bool, number, string, list) in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):  # quoted: `a,b` would be a sweep and `[x]` a list
        return QuotedString(text=value, quote=Quote.single).with_quotes()
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    return repr(value)


def added(argv: list[str], overrides: list[str], extra: list[str]) -> list[str]:
    """argv with `extra` right after its last override (`overrides`: the ones it holds):
    Hydra's parser takes the overrides as one run of words, so `a=1 --config-dir D b=2`
    would fail on b=2."""
    last = max((i for i, word in enumerate(argv) if word in set(overrides)), default=None)
    at = len(argv) if last is None else last + 1
    return [*argv[:at], *extra, *argv[at:]]
