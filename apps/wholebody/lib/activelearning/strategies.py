"""The ``uncertainty`` active learning strategy (``random`` and ``first`` are MONAI Label's)."""

from __future__ import annotations

import logging

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.random import Random

logger = logging.getLogger(__name__)


class Uncertainty(Strategy):
    """The unlabeled study with the highest stored score under image info ``key``.

    Scores of different models are not on one scale (after training, they all drop), so only the
    scores of one model are compared: the model that scored the most candidates, the newer on a
    tie. While the studies are scored again after training, the old ranking holds until the new
    model has scored as many. With no candidate scored yet, a random study, and the answer says so.
    """

    def __init__(self, key: str, fallback: Strategy | None = None):
        super().__init__(f"Study the model is least certain about (highest '{key}' score)")
        self.key = key
        self.fallback = fallback or Random()

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        scored = {}
        for image_id in images:
            record = datastore.get_image_info(image_id).get(self.key)
            if isinstance(record, dict) and isinstance(record.get("score"), (int, float)):
                scored[image_id] = record
        if not scored:
            result = self.fallback(request, datastore)
            if result:
                result["selected_by"] = "random"
                result["note"] = f"no unlabeled study has a '{self.key}' score yet (POST /scoring/{self.key}); picked at random"
            return result

        groups: dict[tuple, dict[str, dict]] = {}
        for image_id, record in scored.items():
            groups.setdefault((record.get("model"), record.get("model_mtime", 0.0)), {})[image_id] = record
        model, ranked = max(groups.items(), key=lambda g: (len(g[1]), g[0][1]))
        image_id = max(sorted(ranked), key=lambda i: ranked[i]["score"])
        logger.info(f"uncertainty: {image_id} (score {ranked[image_id]['score']:.5f}) out of {len(ranked)} scored by {model}")
        return {
            "id": image_id,
            "selected_by": "uncertainty",
            "score": ranked[image_id]["score"],
            "ranked": len(ranked),
            "unscored": len(images) - len(scored),
        }

