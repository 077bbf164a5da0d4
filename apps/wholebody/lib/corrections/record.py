"""The correction record of a saved final label: what the annotator changed against the prediction they were
served, and how long it took. Computed after the save has been answered (one background thread), stored in
the label's info as ``corrections``."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.corrections.effort import common_values, effort
from lib.corrections.served import served
from lib.datastore.image_check import read_header, read_volume
from lib.labels.names import NameResolver
from lib.labels.saved import saved_segments

logger = logging.getLogger(__name__)

RECORD_KEY = "corrections"


def final_voxels(path: str, segments) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """A saved label as one value map with its (name, value) segments; a layered ``.seg.nrrd``'s layers
    are laid over each other in order (a later layer wins where segments overlap)."""
    header = read_header(path, layers_allowed=True)
    voxels = read_volume(path)
    if header.layers <= 1:
        return voxels.reshape(header.shape), [(s.name, s.value) for s in segments]
    stack = voxels.reshape((header.layers, *header.shape))
    flat = np.zeros(header.shape, dtype=np.uint8)
    named = []
    for number, segment in enumerate(segments, start=1):
        flat[stack[segment.layer] == segment.value] = number
        named.append((segment.name, number))
    return flat, named


def correction_record(served_file: str, served_info: dict, final_file: str, final_info: dict) -> dict[str, Any]:
    served_names = {str(k): int(v) for k, v in (served_info.get("label_names") or {}).items()}
    final, segments = final_voxels(final_file, saved_segments(final_info))
    resolver = NameResolver(served_names)
    names, lut = common_values(served_names, segments, lambda name: resolver.channel(name))
    return effort(read_volume(served_file), final, names, lut)


class Recorder:
    """Records corrections of final labels, one at a time, off the request threads."""

    def __init__(self):
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="corrections")

    def saved(
        self, datastore: Datastore, image_id: str, tag: str, models: list[str], started: float | None, annotator: str | None,
        saved_at: float | None = None,
    ):
        """Called when a label was saved (``started``: when the study was handed out, if it was; ``saved_at``:
        when it was saved, if not now, as for a SEG made elsewhere). Returns the future of the record (None when
        no prediction of ``models`` was served for the study)."""
        if tag != DefaultLabelTag.FINAL.value:
            return None
        info = datastore.get_label_info(image_id, tag) or {}
        found = served(datastore, image_id, models, info.get("model") or (info.get("params") or {}).get("model"))
        final_file = datastore.get_label_uri(image_id, tag)
        if not found or not final_file:
            return None
        received = time.time()
        version = os.stat(final_file).st_mtime_ns
        return self._worker.submit(
            self._record, datastore, image_id, tag, found, final_file, version, started, saved_at or received, received, annotator
        )

    def _record(self, datastore, image_id, tag, found, final_file, version, started, saved_at, received, annotator):
        served_file, served_info = found
        try:
            record = correction_record(served_file, served_info, final_file, datastore.get_label_info(image_id, tag) or {})
        except Exception as e:  # a record never costs a label: the save stands, the log says why
            logger.warning(f"corrections of {image_id}: not recorded ({e})")
            return None
        started = started or served_info.get("served_at")
        record.update(
            {
                "model": served_info.get("model"),
                "version": served_info.get("version"),
                "served_at": served_info.get("served_at"),
                "started": started,
                "saved_at": saved_at,
                "seconds": round(saved_at - started, 3) if started else None,
                "annotator": annotator,
                "computed_in_s": round(time.time() - received, 3),
            }
        )
        if datastore.get_label_uri(image_id, tag) != final_file or os.stat(final_file).st_mtime_ns != version:
            logger.info(f"corrections of {image_id}: the label was saved again meanwhile; that save records its own")
            return None
        datastore.update_label_info(image_id, tag, {RECORD_KEY: record})
        return record
