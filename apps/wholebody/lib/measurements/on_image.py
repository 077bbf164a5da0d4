"""Measurements of an infer result's label map over the CT it was inferred from (the input's own grid),
added to the answer's JSON as ``measurements``; ``measurements: false`` in a request turns them off."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
from monai.transforms import LoadImage

from lib.conf import as_bool
from lib.measurements.structures import measure

OPTION = "measurements"  # the request option (on by default: they cost little, see docs/performance.md)
_SECONDS_KEY = "_measurement_seconds"


def measure_on_image(labels: Any, image_path: str, names: Mapping[int, str]) -> list[dict[str, Any]]:
    """``labels`` (X, Y, Z) on the input's grid, as the inversion leaves it; ``image_path`` is read as the
    pre-transforms read it (MONAI's loader: same axes, RAS affine), so index (i, j, k) is one voxel in both."""
    image = LoadImage(image_only=True)(image_path)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    return measure(labels, np.asarray(image), np.asarray(image.affine), names)


def add_measurements(result_json: dict | None, data: dict[str, Any], label_names: Mapping[str, int], label_key: str = "pred") -> dict:
    """The writer's JSON with ``measurements`` of ``data[label_key]`` over ``data["image_path"]``, when the
    request wants them; the seconds they took go to the answer's ``latencies`` (``report_latency``)."""
    result_json = dict(result_json or {})
    if not as_bool(data.get(OPTION, True), OPTION) or not isinstance(data.get("image_path"), str):
        return result_json
    start = time.perf_counter()
    names = {int(value): name for name, value in label_names.items()}
    result_json[OPTION] = measure_on_image(data[label_key], data["image_path"], names)
    result_json[_SECONDS_KEY] = time.perf_counter() - start
    return result_json


def report_latency(result_json: dict) -> dict:
    """Moves the measurements' seconds into ``latencies`` (MONAI Label writes those after the writer ran;
    its ``write`` includes them)."""
    seconds = result_json.pop(_SECONDS_KEY, None)
    if seconds is not None:
        result_json.setdefault("latencies", {})[OPTION] = round(seconds, 3)
    return result_json
