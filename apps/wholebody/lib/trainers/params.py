"""The parameters of a training request and their types, checked before a training process starts.

Stock MONAI Label passes a train request's values on as they come (``max_epochs: "1"`` starts a run that
ends ``ERROR`` with a TypeError) and reads keys no client should set (``train_ds`` / ``val_ds``: JSON files
read from the server's disk; ``bundle_path``: added to the training process's PYTHONPATH). Each trainer
declares the parameters it takes, each with a parser; a value that cannot be used, or a key that is not
declared, is answered 422 naming it. Safe conversions are made (the text ``"1"`` for an integer,
``"false"`` for a boolean, a choice given as Slicer's list with the chosen entry first), and the converted
values are what the training process receives.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from monailabel.utils.others.generic import device_list

from lib.conf import ConfError, as_bool, as_float, as_int

Parser = Callable[[Any, str], Any]

# A run's folder under the trainer's model_dir: a plain name, never a path.
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DATASETS = ("Dataset", "CacheDataset", "PersistentDataset")
MAX_TEXT = 256


def boolean(value: Any, name: str) -> bool:
    return as_bool(value, name)


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(value: Any, name: str) -> int:
        number = as_int(value, name, minimum)
        if maximum is not None and number > maximum:
            raise ConfError(f"'{name}' must be <= {maximum}, got {number}")
        return number

    return parse


def number(low: float, high: float) -> Parser:
    return lambda value, name: as_float(value, name, low, high)


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ConfError(f"'{name}' must be a text of at most {MAX_TEXT} characters, got {value!r:.80}")
    return value


def optional(parse: Parser) -> Parser:
    """``parse``, or None (JSON null)."""
    return lambda value, name: None if value is None else parse(value, name)


def chosen(value: Any) -> Any:
    """A choice as Slicer sends it back (the options, chosen first) -> the chosen one."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def choice(*options: str) -> Parser:
    def parse(value: Any, name: str) -> str:
        if chosen(value) not in options:
            raise ConfError(f"'{name}' must be one of {', '.join(options)}, got {value!r}")
        return chosen(value)

    return parse


def run_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not RUN_NAME.match(value):
        raise ConfError(f"'{name}' must be a plain name (letters, digits, '.', '_', '-'; at most 64), got {value!r}")
    return value


def device(value: Any, name: str) -> str:
    """What MONAI Label's ``name_to_device`` takes: a device name its ``/info/`` lists, ``cpu``, ``cuda[:N]``."""
    value = chosen(value)
    if not isinstance(value, str) or not (value in device_list() or re.fullmatch(r"cpu|cuda(:\d+)?", value)):
        raise ConfError(f"'{name}' must be cpu, cuda, cuda:N or one of {device_list()}, got {value!r}")
    return value


def gpus(value: Any, name: str) -> str:
    """``all`` or GPU indices (``"0,1"``): the training process's CUDA_VISIBLE_DEVICES."""
    value = str(value).replace(" ", "") if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not isinstance(value, str) or not re.fullmatch(r"all|\d+(,\d+)*", value):
        raise ConfError(f"'{name}' must be 'all' or GPU indices such as '0,1', got {value!r}")
    return value


def tracking_uri(value: Any, name: str) -> str:
    # An MLflow file store at a path of the client's choosing would write anywhere on the server.
    if not isinstance(value, str) or (value and not re.match(r"^https?://", value)):
        raise ConfError(f"'{name}' must be empty (the run's own folder) or an http(s) MLflow server, got {value!r:.80}")
    return value


def names(value: Any, name: str) -> list[str]:
    """Names as a list or one comma-separated text."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ConfError(f"'{name}' must be a list of names or a comma-separated text, got {value!r:.80}")
    return [item.strip() for item in items if item.strip()]


def parsed_by(parse: Callable[[Any], Any]) -> Parser:
    """A parser of one argument that raises ConfError with the parameter's name itself."""
    return lambda value, name: parse(value)


# What BasicTrainTask reads from a request (monailabel/tasks/train/basic_train.py); its defaults are the
# trainer's config.
MONAI_LABEL_PARAMS: dict[str, Parser] = {
    "model": text,
    "client_id": optional(text),  # the Slicer module's client adds it to every request
    "local_rank": integer(minimum=0),  # the training process sets it (monailabel/interfaces/utils/app.py)
    "name": run_name,
    "pretrained": boolean,
    "device": device,
    "max_epochs": integer(minimum=1),
    "early_stop_patience": integer(),
    "val_split": number(0.0, 0.9),
    "train_batch_size": integer(minimum=1),
    # Validation reads whole volumes, which differ in size: a batch of two cannot be stacked.
    "val_batch_size": integer(minimum=1, maximum=1),
    "multi_gpu": boolean,
    "gpus": gpus,
    "dataset": choice(*DATASETS),
    "dataloader": choice("ThreadDataLoader", "DataLoader"),
    "tracking": choice("None", "mlflow"),
    "tracking_uri": tracking_uri,
    "tracking_experiment_name": text,
    "tracking_run_name": text,
}


def checked(request: Mapping[str, Any], params: Mapping[str, Parser]) -> dict[str, Any]:
    """``request`` with every value converted by its parser; ConfError (422) for an undeclared key."""
    unknown = sorted(set(request) - set(params))
    if unknown:
        raise ConfError(f"unknown training parameter(s) {unknown}; this trainer takes: {', '.join(sorted(params))}")
    return {key: params[key](value, key) for key, value in request.items()}
