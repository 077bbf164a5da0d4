"""The wholebody model's active learning strategies (``random`` and ``first`` are MONAI Label's).

All read the records the scoring method keeps in the datastore (``records.py``), compare only
records of one model (:func:`~lib.activelearning.records.of_one_model`), and pick at random,
saying so (``"selected_by": "random"`` and a ``note``), while no candidate has a record yet.
"""

from __future__ import annotations

import logging

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.random import Random

from lib.activelearning.labelled_voxels import LabelledVoxels
from lib.activelearning.records import decode_features, model_of, of_one_model, records_with, structure_arrays
from lib.activelearning.selection import class_entropy_pick, coverage_pick, gumbel_scale

logger = logging.getLogger(__name__)


def _unlabelled(request, datastore: Datastore) -> list[str]:
    return datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))


def _at_random(request, datastore: Datastore, note: str):
    result = Random()(request, datastore)
    if result:
        result["selected_by"] = "random"
        result["note"] = f"{note}; picked at random"
    return result


class Uncertainty(Strategy):
    """The unlabeled study with the highest stored score (MC dropout BALD) under image info ``key``."""

    def __init__(self, key: str):
        super().__init__(f"Study the model is least certain about (highest '{key}' score)")
        self.key = key

    def __call__(self, request, datastore: Datastore):
        images = _unlabelled(request, datastore)
        if not images:
            return None
        scored = records_with(datastore, images, self.key, "score")
        if not scored:
            return _at_random(request, datastore, f"no unlabeled study has a '{self.key}' score yet (POST /scoring/{self.key})")
        model, ranked = of_one_model(scored)
        image_id = max(sorted(ranked), key=lambda i: ranked[i]["score"])
        logger.info(f"uncertainty: {image_id} (score {ranked[image_id]['score']:.5f}) out of {len(ranked)} scored by {model}")
        return {
            "id": image_id,
            "selected_by": "uncertainty",
            "score": ranked[image_id]["score"],
            "ranked": len(ranked),
            "unscored": len(images) - len(scored),
        }


class Diversity(Strategy):
    """The study that best covers the part of the pool no labelled study covers, in the current
    model's feature space (:func:`~lib.activelearning.selection.coverage_pick`). Studies other
    clients are annotating count as labelled."""

    def __init__(self, key: str):
        super().__init__("Study most typical of the studies unlike any labelled one (the model's encoder features)")
        self.key = key

    def __call__(self, request, datastore: Datastore):
        images = _unlabelled(request, datastore)
        if not images:
            return None
        featured = records_with(datastore, images, self.key, "features")
        if not featured:
            return _at_random(request, datastore, f"no unlabeled study has '{self.key}' features yet (POST /scoring/{self.key})")
        model, group = of_one_model(featured)
        held = getattr(datastore, "held_by_others", lambda: set())()
        covering = records_with(datastore, set(datastore.get_labeled_images()) | held, self.key, "features")
        known = [decode_features(r["features"]) for r in covering.values() if model_of(r) == model]
        candidates = sorted(group)
        features = np.stack([decode_features(group[i]["features"]) for i in candidates])
        index = coverage_pick(np.stack(known) if known else features[:0], features)
        logger.info(f"diversity: {candidates[index]} out of {len(candidates)}, against {len(known)} labelled or held, by {model}")
        return {
            "id": candidates[index],
            "selected_by": "diversity",
            "ranked": len(candidates),
            "covered_by": len(known),
            "unscored": len(images) - len(featured),
        }


class ClassEntropy(Strategy):
    """The structure with the fewest labelled voxels so far, and of the studies predicted to hold
    it, one picked by that structure's entropy with Gumbel noise that decays as studies get
    labelled (:func:`~lib.activelearning.selection.class_entropy_pick`)."""

    def __init__(self, key: str, channels: dict[str, int], noise_scale: float = 1.0, rng: np.random.Generator | None = None):
        super().__init__("Study most uncertain about the structure labelled least so far (class-stratified entropy, decaying noise)")
        self.key = key
        self.channels = dict(channels)
        self.names = {c: n for n, c in self.channels.items()}
        self.noise_scale = noise_scale
        self.labelled_voxels = LabelledVoxels(self.channels)
        self.rng = rng or np.random.default_rng()

    def __call__(self, request, datastore: Datastore):
        images = _unlabelled(request, datastore)
        if not images:
            return None
        scored = records_with(datastore, images, self.key, "structures")
        if not scored:
            return _at_random(request, datastore, f"no unlabeled study has '{self.key}' structure scores yet (POST /scoring/{self.key})")
        model, group = of_one_model(scored)
        candidates = sorted(group)
        labelled, studies = self.labelled_voxels(datastore)
        voxels, entropy = structure_arrays((group[i] for i in candidates), self.channels, self.labelled_voxels.size)
        picked = class_entropy_pick(labelled, voxels, entropy, studies, self.noise_scale, self.rng)
        if picked is None:
            return _at_random(request, datastore, "the model predicts no structure in any unlabeled study")
        index, target = picked
        name = self.names[target]
        logger.info(f"class_entropy: {candidates[index]} for {name} ({int(labelled[target])} labelled voxels) out of {len(candidates)}, by {model}")
        return {
            "id": candidates[index],
            "selected_by": "class_entropy",
            "structure": name,
            "labelled_voxels": int(labelled[target]),
            "structure_entropy": float(entropy[index, target]),
            "noise_scale": gumbel_scale(studies, self.noise_scale),
            "ranked": len(candidates),
            "unscored": len(images) - len(scored),
        }


class DiversityThenClassEntropy(Strategy):
    """``diversity`` while fewer than ``studies`` studies are labelled, ``class_entropy`` after: a
    model trained on one or two studies knows too little for its uncertainty to mean much, but its
    features already tell typical from unusual."""

    def __init__(self, diversity: Diversity, class_entropy: ClassEntropy, studies: int):
        super().__init__(f"Diversity for the first {studies} labelled studies, then class-stratified entropy")
        self.diversity = diversity
        self.class_entropy = class_entropy
        self.studies = studies

    def __call__(self, request, datastore: Datastore):
        early = len(datastore.get_labeled_images()) < self.studies
        return (self.diversity if early else self.class_entropy)(request, datastore)
