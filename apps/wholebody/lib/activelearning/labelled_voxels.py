"""How many voxels of each structure the saved final labels hold: what ``class_entropy`` balances."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import torch
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.labels.saved import saved_label_names
from lib.transforms.partial_labels import normalise_name

logger = logging.getLogger(__name__)


def value_to_channel(info: dict, channels: dict[str, int]) -> dict[int, int]:
    """Saved label value -> model channel, matched by segment name as the trainer's
    ``PartialLabelsd`` does (values of names the model lacks are left out); without names, the
    values are the channels (labels written from this model's own infer results)."""
    names = saved_label_names(info)
    if not names:
        return {c: c for c in channels.values()}
    by_name = {normalise_name(k): v for k, v in channels.items()}
    return {int(v): by_name[normalise_name(n)] for n, v in names.items() if normalise_name(n) in by_name}


class LabelledVoxels:
    """Voxels per channel summed over the saved final labels; each label file is read once
    (again only when its file or info changes)."""

    def __init__(self, channels: dict[str, int]):
        self.channels = dict(channels)
        self.size = max(self.channels.values()) + 1
        self.lock = threading.Lock()
        self._counts: dict[str, tuple[tuple, np.ndarray]] = {}
        self._load = LoadImage(image_only=True)

    def __call__(self, datastore: Datastore) -> tuple[np.ndarray, int]:
        """(voxels per channel (C,), how many labelled studies)."""
        labelled = datastore.get_labeled_images()
        total = np.zeros(self.size, dtype=np.int64)
        with self.lock:
            for image_id in labelled:
                counts = self._label_counts(datastore, image_id)
                if counts is not None:
                    total += counts
        return total, len(labelled)

    def _label_counts(self, datastore: Datastore, image_id: str) -> np.ndarray | None:
        path = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL)
        if not path or not os.path.exists(path):
            return None  # e.g. a label that is only in the PACS so far: counted once it is here
        info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL) or {}
        version = (path, os.stat(path).st_mtime, info.get("ts"))
        cached = self._counts.get(image_id)
        if cached and cached[0] == version:
            return cached[1]
        mapping = {v: c for v, c in value_to_channel(info, self.channels).items() if v > 0 and 0 < c < self.size}
        counts = np.zeros(self.size, dtype=np.int64)
        if mapping:
            try:
                values = torch.as_tensor(self._load(path)).flatten().long()
            except Exception as e:  # an unreadable label must not stop next-sample requests
                logger.warning(f"class_entropy: label of {image_id} unreadable ({e}); its voxels are not counted")
                return None
            top = max(mapping)
            # Values no structure maps to are dropped before counting: bincount's size stays bounded.
            per_value = torch.bincount(torch.where((values > 0) & (values <= top), values, 0), minlength=top + 1).numpy()
            for value, channel in mapping.items():
                counts[channel] += per_value[value]
        self._counts[image_id] = (version, counts)
        return counts
