"""The ``stratified_random`` strategy: what a careful lead does by hand at a new site, and the baseline
no model strategy beat in the shifted-site study (docs/active-learning.md).

Studies fall into acquisition groups; the next study comes from the group with the fewest labelled
studies (studies other clients are annotating count as labelled), at random within it, weighted like
``random`` by the time since it was last handed out. A study's group is, in this order:

* its image info ``acquisition_group`` when a lead set one (``PUT /datastore/image/info``), e.g. the
  contrast phase or dose protocol, which no NIfTI or NRRD header holds;
* else read from its image header, no voxel read: the slice spacing along the patient's long axis
  (thin <= 1.5 mm, standard <= 3 mm, thick) and the length scanned along it (one region < 350 mm, trunk
  < 700 mm, whole body).
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.random_strategy import weighted_pick
from lib.datastore.image_check import ImageHeader, read_header
from lib.transforms.validate import InvalidImageError

logger = logging.getLogger(__name__)

GROUP_KEY = "acquisition_group"
MAX_GROUP_LENGTH = 64
SLICE_BANDS = ((1.5, "thin slices"), (3.0, "standard slices"), (float("inf"), "thick slices"))  # mm, upper bounds
COVERAGE_BANDS = ((350.0, "one region"), (700.0, "trunk"), (float("inf"), "whole body"))  # mm scanned
UNREADABLE = "unreadable header"


def _band(value: float, bands) -> str:
    return next(name for upper, name in bands if value <= upper)


def header_group(header: ImageHeader) -> str:
    """'<slices>, <coverage>' along the voxel axis closest to the patient's superior direction."""
    columns = header.affine[:3, :3]
    axis = int(np.argmax(np.abs(columns[2]) / np.linalg.norm(columns, axis=0)))
    spacing = header.spacing[axis]
    return f"{_band(spacing, SLICE_BANDS)}, {_band(spacing * header.shape[axis], COVERAGE_BANDS)}"


class StratifiedRandom(Strategy):
    def __init__(self):
        super().__init__("A study at random from the acquisition group (slice spacing, length scanned) with the fewest labelled studies")
        self._from_headers: dict[tuple[str, str, float], str] = {}  # (id, file, mtime) -> group: headers are read once

    def group(self, datastore: Datastore, image_id: str) -> str:
        chosen = datastore.get_image_info(image_id).get(GROUP_KEY)
        if isinstance(chosen, str) and 0 < len(chosen.strip()) <= MAX_GROUP_LENGTH:
            return chosen.strip()
        path = datastore.get_image_uri(image_id)
        key = (image_id, path, os.path.getmtime(path) if path and os.path.exists(path) else 0.0)
        if key not in self._from_headers:
            try:
                self._from_headers[key] = header_group(read_header(path))
            except (InvalidImageError, OSError) as e:
                logger.warning(f"stratified_random: {image_id}: {e}")
                return UNREADABLE
        return self._from_headers[key]

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        candidates = {i: self.group(datastore, i) for i in images}
        taken = set(datastore.get_labeled_images()) | getattr(datastore, "held_by_others", lambda: set())()
        labelled = Counter(self.group(datastore, i) for i in taken)
        fewest = min(labelled[g] for g in candidates.values())
        group = random.choice(sorted({g for g in candidates.values() if labelled[g] == fewest}))
        image_id, weight = weighted_pick(sorted(i for i, g in candidates.items() if g == group), datastore, request.get("strategy"))
        logger.info(f"stratified_random: {image_id} from '{group}' ({fewest} labelled; groups {dict(Counter(candidates.values()))})")
        return {"id": image_id, "weight": weight, "selected_by": "stratified_random", "group": group, "labelled_in_group": fewest}
