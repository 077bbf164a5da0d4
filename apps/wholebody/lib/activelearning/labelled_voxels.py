"""How many voxels of each structure the saved final labels hold: what ``class_entropy`` balances."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.datastore.image_check import read_header, read_volume
from lib.labels.names import NameResolver
from lib.labels.saved import saved_segments
from lib.transforms.partial_labels import MAX_VALUE, value_table

logger = logging.getLogger(__name__)


def channel_table(info: dict, channels: dict[str, int], layers: int = 1) -> torch.Tensor:
    """(layers, 256): a saved label's value in a layer -> the model's channel, matched by segment as the
    trainer's ``PartialLabelsd`` does (0 for segments the model lacks); without segments the values are
    the channels (labels written from this model's own infer results)."""
    segments = saved_segments(info)
    if segments:
        return value_table(segments, NameResolver(channels), layers)
    table = torch.zeros(layers, MAX_VALUE + 1, dtype=torch.long)
    for channel in channels.values():
        table[:, channel] = channel
    return table


class LabelledVoxels:
    """Voxels per channel summed over the saved final labels; each label file is read once
    (again only when its file or info changes)."""

    def __init__(self, channels: dict[str, int]):
        self.channels = dict(channels)
        self.size = max(self.channels.values()) + 1
        self.lock = threading.Lock()
        self._counts: dict[str, tuple[tuple, np.ndarray]] = {}

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
        try:
            header = read_header(path, layers_allowed=True)
            values = torch.as_tensor(read_volume(path).reshape((header.layers, -1)).astype(np.int64))
        except Exception as e:  # an unreadable label must not stop next-sample requests
            logger.warning(f"class_entropy: label of {image_id} unreadable ({e}); its voxels are not counted")
            return None
        table = channel_table(info, self.channels, header.layers)
        mapped = torch.stack([table[layer][values[layer].clamp(0, MAX_VALUE)] for layer in range(header.layers)])
        counts = torch.bincount(mapped.flatten(), minlength=self.size)[: self.size].numpy().copy()
        counts[0] = 0
        self._counts[image_id] = (version, counts)
        return counts
