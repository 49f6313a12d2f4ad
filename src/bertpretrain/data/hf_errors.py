"""What the `datasets` library raises that a user can fix, as one-line UserErrors.

Failures are told apart by their exception types (datasets' own, in datasets.exceptions
and datasets.data_files, and the builtin ConnectionError and FileNotFoundError that they
and huggingface_hub's subclass), never by the wording of their messages, which changes
between releases. Two failures have no type of their own: a missing or unknown config (a
plain ValueError) and a dataset with a loading script (a plain RuntimeError). For those,
`load_builder` asks what is true instead: the dataset's configs through datasets' public
API, and whether the script is there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertpretrain.errors import UserError


@contextmanager
def user_errors(what: str) -> Iterator[None]:
    """datasets' exceptions for what a user can fix, as one-line UserErrors; `what` names
    the dataset (`data.name=X (data.config=Y)`)."""
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

    try:
        yield
    except ConnectionError:  # offline (huggingface_hub's OfflineModeIsEnabled), or no network
        raise UserError(
            f"cannot reach the Hugging Face Hub for {what} and it is not in the cache "
            "(offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set, or no network); load it once "
            "online, or set data.name to a local folder of data files (train.txt, validation.txt)"
        ) from None
    except DatasetNotFoundError as e:  # no such dataset or revision, or gated
        raise UserError(
            f"{what}: {_one_line(e)}; check the name on huggingface.co/datasets and "
            "data.revision, and for a gated dataset log in with `hf auth login`"
        ) from None
    except EmptyDatasetError:
        raise UserError(
            f"{what} holds no data files; put files named by split in it (train.txt, "
            "validation.txt, or .json/.csv/.parquet)"
        ) from None
    except FileNotFoundError as e:  # neither a folder nor a Hub dataset, or no data files
        raise UserError(
            f"{what}: {_one_line(e)}; set data.name to a Hub dataset or a local folder"
        ) from None
    except DatasetGenerationError as e:  # a data file datasets cannot parse
        raise UserError(
            f"{what}: cannot read its data files ({_one_line(e.__cause__ or e)}); fix or "
            "remove the bad file"
        ) from None


def load_builder(
    source: str,
    name: str,
    config: str | None,
    revision: str | None,
    cache_dir: str | None,
    what: str,
) -> Any:
    """`datasets.load_dataset_builder(source, config)`; a missing or unknown config, or a
    loading script, is a UserError. `name` is data.name as the user gave it."""
    import datasets

    try:
        return datasets.load_dataset_builder(source, config, revision=revision, cache_dir=cache_dir)
    except ValueError:
        problem = _config_problem(source, name, config, revision, cache_dir)
        if problem is None:
            raise
        raise UserError(problem) from None
    except RuntimeError:
        if not _has_loading_script(source, name, revision):
            raise
        raise UserError(
            f"{what} is a dataset with a loading script, which the datasets library no longer "
            "runs; pick a dataset of data files (e.g. Salesforce/wikitext)"
        ) from None


def _config_problem(
    source: str, name: str, config: str | None, revision: str | None, cache_dir: str | None
) -> str | None:
    """What is wrong with `config` by the configs datasets lists for the dataset: None
    when nothing is (the failure was another one). Asked only after a failure, so a run
    that works resolves the dataset once."""
    import datasets

    try:
        configs = datasets.get_dataset_config_names(source, revision=revision, cache_dir=cache_dir)
        default = datasets.get_dataset_default_config_name(
            source, revision=revision, cache_dir=cache_dir
        )
    except Exception:  # cannot tell: the original error speaks for itself
        return None
    if config is None and default is None:
        return (
            f"data.name={name} has several configs: set data.config to one of {', '.join(configs)}"
        )
    if config is not None and config not in configs:
        return (
            f"data.name={name} has no config {config!r}; set data.config to one of "
            f"{', '.join(configs)}"
        )
    return None


def _has_loading_script(source: str, name: str, revision: str | None) -> bool:
    """Whether the dataset has a loading script, `FOLDER.py` at its top as datasets looks
    for it: in a local folder, or in the Hub cache, where datasets fetched it to find out."""
    script = f"{Path(source).name}.py"
    if Path(source).is_dir():
        return (Path(source) / script).is_file()
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, script, revision=revision, repo_type="dataset")
    return isinstance(found, str)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
