"""The record a scoring run keeps in each study's info, and reading records back for a strategy.

Per unlabelled study (``wholebody_uncertainty``, README "Active learning")::

    {"score": 0.0027, "entropy": 0.41, "structures": {"liver": [0.113, 5120], ...},
     "features": "<base64 float16>", "model": "wholebody_lowres.pt", "model_mtime": 1763884961.2, ...}

``structures``: name -> [entropy of the structure (nats), voxels predicted as it], for the
structures predicted in at least one voxel. ``features``: the pooled encoder output, kept for
labelled studies too (without a score), so that diversity compares like with like.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Iterable

import numpy as np
import torch

MODEL_FIELDS = ("model", "model_mtime")


def encode_features(features: torch.Tensor) -> str:
    """float16, little-endian, base64: the 256 features of the wholebody SegResNet in 684 characters of JSON."""
    return base64.b64encode(features.detach().cpu().numpy().astype("<f2").tobytes()).decode("ascii")


def decode_features(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def structures_record(entropy: torch.Tensor, voxels: torch.Tensor, names: dict[int, str]) -> dict[str, list]:
    """name -> [entropy, voxels] of the named channels predicted in at least one voxel."""
    return {
        names[c]: [round(float(entropy[c]), 5), int(voxels[c])]
        for c in range(len(voxels))
        if c in names and int(voxels[c]) > 0
    }


def structure_arrays(records: Iterable[dict], channels: dict[str, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(voxels (N, C), entropy (N, C)) from records' ``structures``; unlisted structures: 0 voxels."""
    records = list(records)
    voxels = np.zeros((len(records), size))
    entropy = np.full((len(records), size), np.nan)
    for i, record in enumerate(records):
        for name, (h, n) in record.get("structures", {}).items():
            if name in channels:
                entropy[i, channels[name]], voxels[i, channels[name]] = h, n
    return voxels, entropy


def model_of(record: dict) -> tuple:
    return tuple(record.get(k) for k in MODEL_FIELDS)


def well_formed(field: str, value: Any) -> bool:
    """Whether ``value`` is what a scoring run writes under ``field``: image info can also be written
    by any client (``PUT /datastore/image/info``), and a malformed record must not break next-sample."""
    if field == "score":
        return isinstance(value, (int, float)) and math.isfinite(value)
    if field == "features":
        try:
            features = decode_features(value)
        except (TypeError, ValueError, binascii.Error):
            return False
        return len(features) > 0 and bool(np.isfinite(features).all())
    if field == "structures":
        return isinstance(value, dict) and all(
            isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
            for v in value.values()
        )
    return value is not None


def records_with(datastore, image_ids: Iterable[str], key: str, field: str) -> dict[str, dict]:
    """image id -> its record under ``key`` for the studies whose record has a well-formed ``field``."""
    found = {}
    for image_id in image_ids:
        record = datastore.get_image_info(image_id).get(key)
        if isinstance(record, dict) and well_formed(field, record.get(field)):
            found[image_id] = record
    return found


def of_one_model(records: dict[str, dict[str, Any]]) -> tuple[tuple, dict[str, dict]]:
    """The records of one model: the one that scored the most of them, the newer on a tie.

    Scores of different models are not on one scale (after training, they all drop): while the
    studies are scored again after training, the old model's records hold until the new model has
    scored as many.
    """
    groups: dict[tuple, dict[str, dict]] = {}
    for image_id, record in records.items():
        groups.setdefault(model_of(record), {})[image_id] = record
    return max(groups.items(), key=lambda g: (len(g[1]), g[0][1] or 0.0))
