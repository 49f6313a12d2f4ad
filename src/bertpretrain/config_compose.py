"""conf/ composed into a typed, checked Config: Hydra's registration of the schema, the
composition `train` and the other commands share, and Hydra's errors made one line.

The schemas live in `config`, the rules a type cannot express in `config_checks`; of the
three, only this module knows Hydra.
"""

from __future__ import annotations

import difflib
import itertools
import os
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bertpretrain.config import (
    DATA_SCHEMAS,
    FINETUNE_SCHEMAS,
    GROUP_SCHEMAS,
    Config,
    DataConfig,
    FinetuneConfig,
)
from bertpretrain.config_checks import check
from bertpretrain.errors import UserError


def compose(overrides: list[str], config_name: str = "config") -> tuple[Config, DictConfig]:
    """conf/ composed with `overrides` as `train` would (the hydra node included), and its
    typed, checked Config. Hydra's multi-line composition errors become one UserError line
    (HYDRA_FULL_ERROR=1 keeps the original exception)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=overrides, return_hydra_config=True
            )
        name_the_model(cfg)
        return to_config(without_hydra(cfg)), cfg
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        for override in overrides:
            _refuse_moved(override.split("=", 1)[0].lstrip("+~"))
        _refuse_moved(_failing_key(e))
        command = "finetune" if config_name == "finetune" else "train"
        raise UserError(
            f"bad config: {one_line(e)}{_close_key(overrides, config_name)}"
            f"{_quoting_hint(overrides, e)}; see `bertpretrain {command} --help` for the "
            "groups and keys"
        ) from None


def register_configs() -> None:
    """Make the schema available to config.yaml's defaults list as `base_config`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)
    ConfigStore.instance().store(name="base_finetune", node=FinetuneConfig)


def conf_dir() -> Path:
    """The folder holding config.yaml: inside the package in a wheel, else the repo's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UserError(f"cannot find the bertpretrain configs next to {here}; reinstall the package")


def name_the_model(cfg: DictConfig) -> None:
    """A model config without `name:` (a user's --config-dir file) is named after its file:
    `model=mini` gives `mini`. `cfg` is Hydra's composed config, the hydra node included."""
    model = cfg.get("model")
    if isinstance(model, DictConfig) and OmegaConf.is_missing(model, "name"):
        model.name = OmegaConf.select(cfg, "hydra.runtime.choices.model") or "custom"


def without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def to_config(cfg: DictConfig) -> Config | FinetuneConfig:
    """Turn Hydra's composed DictConfig into the typed, checked Config (FinetuneConfig when
    it has a task: conf/finetune.yaml's)."""
    finetune = "task" in cfg
    schema = FinetuneConfig if finetune else Config
    _check_known_keys(cfg, schema)
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):  # composed without the schema (e.g. a user's own config)
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    if not finetune:
        obj.data = _typed_data(cfg.data)
    check(obj)
    return obj


def _check_known_keys(cfg: DictConfig, schema: type = Config) -> None:
    """`+trainer.max_step=1` adds a key that no code reads; a misspelt key must fail."""
    groups = {f.name: f.type for f in fields(schema)}
    if schema is FinetuneConfig:
        schemas = FINETUNE_SCHEMAS
    else:
        source = cfg.get("data", {}).get("source")
        schemas = {**GROUP_SCHEMAS, "data": DATA_SCHEMAS.get(source)}
    unknown = [k for k in cfg if k not in groups and k != "hydra"]
    for group, schema in schemas.items():
        node = cfg.get(group)
        if schema is not None and isinstance(node, DictConfig):
            known = {f.name for f in fields(schema)}
            unknown += [f"{group}.{k}" for k in node if k not in known]
    if unknown:
        key = unknown[0]
        _refuse_moved(key)
        group, _, name = key.rpartition(".")
        known = [f.name for f in fields(schemas[group])] if group in schemas else list(groups)
        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"did you mean {group + '.' if group else ''}{close[0]}?"
            if close
            else (f"the keys of {group or 'the config'} are: {', '.join(known)}")
        )
        raise UserError(f"bad config: {key} is not a setting; {hint}")


def _typed_data(data: DictConfig) -> DataConfig:
    """The data node typed by its source's schema. The schemas are not options of the
    `data` group (Hydra's --help would list them as corpora), so they apply here: a key of
    another corpus or a wrong type fails as it would at composition."""
    source = data.get("source")
    schema = DATA_SCHEMAS.get(source)
    if schema is None:
        raise UserError(
            f"data.source={source!r} is unknown; use data=wikitext2, data=text or data=hf"
        )
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"bad config: data.{key}: {problem} (data={source}, {schema.__name__})"
        ) from None


# Settings that moved to the speed group (they change speed, not the recipe): old
# overrides and users' config files get the new name instead of "not a setting".
MOVED = {
    "model.gradient_checkpointing": "speed.gradient_checkpointing",
    "trainer.precision": "speed.precision",
    "trainer.num_workers": "speed.num_workers",
}


def _refuse_moved(key: str | None) -> None:
    if key in MOVED:
        raise UserError(
            f"bad config: {key} is now {MOVED[key]} (the speed group holds the settings that "
            f"change only speed and memory); write {MOVED[key]}=... instead"
        )


def _close_key(overrides: list[str], config_name: str) -> str:
    """` (did you mean trainer.epochs?)` for the first override whose key is not in its
    group's schema but is close to one that is; "" otherwise."""
    schemas = FINETUNE_SCHEMAS if config_name == "finetune" else GROUP_SCHEMAS
    for override in overrides:
        group, _, name = override.split("=", 1)[0].lstrip("+~").partition(".")
        schema = schemas.get(group)
        if schema is None or not name or "." in name:
            continue
        known = [f.name for f in fields(schema)]
        close = difflib.get_close_matches(name, known, n=1)
        if name not in known and close:
            return f" (did you mean {group}.{close[0]}?)"
    return ""


def _failing_key(e: BaseException | None) -> str | None:
    """The key an OmegaConf error in the chain names (a user's YAML file sets it)."""
    while e is not None:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            return e.full_key
        e = e.__cause__ or e.__context__
    return None


_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment", "To append")
_PLACEHOLDERS = ("$VALUE", "$KEY", "$FULL_KEY")  # OmegaConf's message templates, unfilled


def one_line(e: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines; keep what names the problem."""
    parts = []
    while e is not None and len(parts) < 3:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        for ln in lines:
            if ln.startswith("Config search path"):
                break  # what follows lists Hydra's internals, not the user's mistake
            if ln.startswith(_NOISE) or any(p in ln for p in _PLACEHOLDERS):
                continue
            if ln not in parts:
                parts.append(ln)
        e = e.__cause__ or e.__context__
    return " ".join(parts) or "invalid configuration"


def _quoting_hint(overrides: list[str], e: BaseException) -> str:
    """Hydra's override grammar takes non-ASCII characters only inside quotes."""
    if "Lexer" not in f"{type(e).__name__} {e}":
        return ""
    odd = next((o for o in overrides if not o.isascii()), None)
    if odd is None:
        return ""
    key, _, value = odd.partition("=")
    return f"; quote a value with non-ASCII characters: '{key}=\"{value}\"'"


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The overrides of each job of a `-m` sweep, as Hydra's basic sweeper expands them
    (the product of every comma list and range): empty when a range is. None for a sweep
    it cannot expand here (a glob, or another sweeper's syntax): each job is then checked
    when it starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = []
        for override in parsed:
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices.append([override.input_line])
            elif override.is_discrete_sweep() and override.value_type.name != "GLOB_CHOICE_SWEEP":
                choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
            else:
                return None
    except HydraException as e:
        raise UserError(f"bad override: {one_line(e)}{_quoting_hint(overrides, e)}") from None
    return [list(job) for job in itertools.product(*choices)]
