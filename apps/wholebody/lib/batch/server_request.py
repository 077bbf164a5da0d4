"""Checks a ``POST /batch/infer/{model}`` request in the server, before any study is read.

Stock MONAI Label starts the batch whatever it is sent: an unknown model or a click model fails once
per study in a background process, a param of the wrong type (``"max_workers": "two"``,
``"multi_gpu": "no"`` read as true) fails or misleads inside it. Here such a request is answered with a
4xx naming the problem, and the params go on with their types (``"false"`` -> False).
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.endpoints import batch_infer
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.conf import ConfError, as_bool, as_float, as_int
from lib.server.errors import NotFoundError, check_id

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def checked_params(infers: dict[str, Any], model: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of a batch of ``model`` with their types; raises NotFoundError (404), ConfError (422)
    or a 400 for a label tag that cannot be a file name."""
    segmentation = sorted(name for name, task in infers.items() if task.type == InferType.SEGMENTATION)
    task = infers.get(model)
    if task is None:
        raise NotFoundError(f"unknown model '{model}'; batch inference runs: {', '.join(segmentation)}")
    if task.type != InferType.SEGMENTATION:
        raise ConfError(f"'{model}' is a {task.type.value} model that needs clicks; batch inference runs: {', '.join(segmentation)}")
    if not isinstance(params, dict):
        raise ConfError(f"params must be a JSON object, got {type(params).__name__}")

    params = dict(params)
    for key in ("multi_gpu", "save_label"):
        if key in params:
            params[key] = as_bool(params[key], key)
    for key in ("max_workers", "max_batch_size"):
        if key in params:
            params[key] = as_int(params[key], key, minimum=0)
    if "label_tag" in params:
        params["label_tag"] = check_id(str(getattr(params["label_tag"], "value", params["label_tag"])), "label tag")
    if "device" in params and not (isinstance(params["device"], str) and _is_device(params["device"])):
        raise ConfError(f"'device' must be 'cpu', 'cuda' or 'cuda:N', got {params['device']!r}")
    if "gpus" in params and not _is_gpu_list(params["gpus"]):
        raise ConfError(f"'gpus' must be 'all' or GPU indices such as '0,1', got {params['gpus']!r}")
    if "logging" in params and str(params["logging"]).upper() not in LOG_LEVELS:
        raise ConfError(f"'logging' must be one of {', '.join(LOG_LEVELS)}, got {params['logging']!r}")

    # The model's own options (Slicer's config panel): a value must have the type of its default.
    for key, default in task.config().items():
        if key not in params or key == "device":
            continue
        if isinstance(default, bool):
            params[key] = as_bool(params[key], key)
        elif isinstance(default, int):
            params[key] = as_int(params[key], key)
        elif isinstance(default, float):
            params[key] = as_float(params[key], key)
    return params


def _is_device(value: str) -> bool:
    kind, _, index = value.partition(":")
    return kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit())


def _is_gpu_list(value: Any) -> bool:
    text = str(value).strip()
    return text == "all" or all(part.strip().isdigit() for part in text.split(","))


def install(app) -> None:
    """``POST /batch/infer/{model}`` checks its request first (the route looks ``run`` up on every call)."""
    start = batch_infer.run

    def run(model: str, images=None, params=None, run_sync=False):
        params = checked_params(app._infers, model, params or {})
        logging.getLogger(__name__).info(f"batch infer {model}: images {getattr(images, 'value', images)}, params {params}")
        return start(model, images, params, run_sync)

    batch_infer.run = run
