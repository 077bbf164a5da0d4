"""The wholebody model's active learning strategies (``random``: ``random_strategy.py``; ``first`` is MONAI Label's).

All read the records the scoring method keeps in the datastore (``records.py``), compare only
records of one model (:func:`~lib.activelearning.records.of_one_model`), and pick at random,
saying so (``"selected_by": "random"`` and a ``note``), while no candidate has a record yet.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import Counter

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.labelled_voxels import LabelledVoxels
from lib.activelearning.random_strategy import Random
from lib.activelearning.records import decode_features, model_of, of_one_model, records_with, structure_arrays
from lib.activelearning.selection import class_entropy_pick, coverage_pick, gumbel_scale

logger = logging.getLogger(__name__)


def _at_random(request, datastore: Datastore, note: str):
    result = Random()(request, datastore)
    if result:
        result["selected_by"] = "random"
        result["note"] = f"{note}; picked at random"
    return result


class _FromRecords(Strategy):
    """A strategy that ranks the unlabeled studies whose record under image info ``key`` has
    ``field``, comparing only the records of one model."""

    field = ""

    def __init__(self, description: str, key: str):
        super().__init__(description)
        self.key = key

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        records = records_with(datastore, images, self.key, self.field)
        if not records:
            return _at_random(request, datastore, f"no unlabeled study has a '{self.key}' record with {self.field} yet (POST /scoring/{self.key})")
        model, group = of_one_model(records)
        answer = self.pick(request, datastore, model, group)
        if answer:
            answer["unscored"] = len(images) - len(records)
        return answer

    @abstractmethod
    def pick(self, request, datastore: Datastore, model: tuple, records: dict[str, dict]) -> dict | None:
        """The answer, from the candidates' ``records`` (all of ``model``)."""


class Uncertainty(_FromRecords):
    """The unlabeled study with the highest stored score (MC dropout BALD) under image info ``key``."""

    field = "score"

    def __init__(self, key: str):
        super().__init__(f"Study the model is least certain about (highest '{key}' score)", key)

    def pick(self, request, datastore, model, records):
        image_id = max(sorted(records), key=lambda i: records[i]["score"])
        logger.info(f"uncertainty: {image_id} (score {records[image_id]['score']:.5f}) out of {len(records)} scored by {model}")
        return {"id": image_id, "selected_by": "uncertainty", "score": records[image_id]["score"], "ranked": len(records)}


class Diversity(_FromRecords):
    """The study that best covers the part of the pool no labelled study covers, in the current
    model's feature space (:func:`~lib.activelearning.selection.coverage_pick`). Studies other
    clients are annotating count as labelled."""

    field = "features"

    def __init__(self, key: str):
        super().__init__("Study most typical of the studies unlike any labelled one (the model's encoder features)", key)

    def pick(self, request, datastore, model, records):
        decoded = {i: decode_features(r["features"]) for i, r in records.items()}
        size = Counter(len(f) for f in decoded.values()).most_common(1)[0][0]  # the network's; others are not its
        candidates = sorted(i for i, f in decoded.items() if len(f) == size)
        features = np.stack([decoded[i] for i in candidates])
        held = getattr(datastore, "held_by_others", lambda: set())()
        covering = records_with(datastore, set(datastore.get_labeled_images()) | held, self.key, "features")
        known = [f for f in (decode_features(r["features"]) for r in covering.values() if model_of(r) == model) if len(f) == size]
        index = coverage_pick(np.stack(known) if known else features[:0], features)
        logger.info(f"diversity: {candidates[index]} out of {len(candidates)}, against {len(known)} labelled or held, by {model}")
        return {"id": candidates[index], "selected_by": "diversity", "ranked": len(candidates), "covered_by": len(known)}


class ClassEntropy(_FromRecords):
    """The structure with the fewest labelled voxels so far, and of the studies predicted to hold
    it, one picked by that structure's entropy with Gumbel noise that decays as studies get
    labelled (:func:`~lib.activelearning.selection.class_entropy_pick`)."""

    field = "structures"

    def __init__(self, key: str, channels: dict[str, int], noise_scale: float = 1.0, rng: np.random.Generator | None = None):
        super().__init__("Study most uncertain about the structure labelled least so far (class-stratified entropy, decaying noise)", key)
        self.channels = dict(channels)
        self.names = {c: n for n, c in self.channels.items()}
        self.noise_scale = noise_scale
        self.labelled_voxels = LabelledVoxels(self.channels)
        self.rng = rng or np.random.default_rng()

    def pick(self, request, datastore, model, records):
        candidates = sorted(records)
        labelled, studies = self.labelled_voxels(datastore)
        voxels, entropy = structure_arrays((records[i] for i in candidates), self.channels, self.labelled_voxels.size)
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
