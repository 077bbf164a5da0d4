"""The ``random`` strategy: MONAI Label's, with weights that never all vanish.

Stock ``Random`` weights each unlabeled study by the seconds since this strategy last handed it out
(image info ``strategy.<name>.ts``), so studies not handed out lately come first. A study handed out
in the current second weighs 0, and when every candidate does (one free study asked for twice in a
second; the same client asking again) ``random.choices`` raises and the request gets a 500. The
hand-out time is image info, which any annotator may write (``PUT /datastore/image/info``): a time in
the future or not a number broke it too. Here each weight is 1 plus the seconds since, counted from 0.
"""

from __future__ import annotations

import logging
import math
import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)


def handed_out_at(info, strategy) -> float:
    """When ``strategy`` last handed out the study of image info ``info`` (0: never, or unreadable)."""
    record = info.get("strategy") if isinstance(info, dict) else None
    record = record.get(strategy) if isinstance(record, dict) else None
    ts = record.get("ts") if isinstance(record, dict) else None
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts) else 0.0


def weighted_pick(images: list[str], datastore: Datastore, strategy) -> tuple[str, int]:
    """One of ``images`` (not empty) at random, weighted by 1 plus the seconds since ``strategy`` last
    handed it out, and its weight."""
    now = time.time()
    weights = [1 + int(max(0.0, now - handed_out_at(datastore.get_image_info(i), strategy))) for i in images]
    chosen = random.choices(range(len(images)), weights=weights)[0]
    return images[chosen], weights[chosen]


class Random(Strategy):
    def __init__(self):
        super().__init__("Random Strategy")

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        image_id, weight = weighted_pick(images, datastore, request.get("strategy"))
        logger.info(f"Random: Selected Image: {image_id}; Weight: {weight} (of {len(images)} studies)")
        return {"id": image_id, "weight": weight}
