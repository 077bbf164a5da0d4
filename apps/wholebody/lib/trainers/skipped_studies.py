"""Studies that fail in training are skipped, named with the reason in the train stats, and the run goes on.

A label can still break training after the checks at save time: a file damaged on disk, a label saved
before those checks existed, a transform that fails on one study's content (``RandCropByPosNegLabeld``
on a label that does not match its image). MONAI's datasets have no skip, and one such study used to
end every run ``ERROR`` without naming it. ``SkippingDataset`` wraps the dataset a trainer reads: an
item whose loading or transforms raise is recorded once (image id, reason) and the next good item is
returned in its place, so the epoch keeps its length. Chosen over a check pass before training, which
would read and resample every study one more time and still miss failures of random transforms.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Sequence

from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

# MONAI wraps a transform's error as "applying transform <monai...Class object at 0x...>" (from the original).
_TRANSFORM = re.compile(r"applying transform <([\w.]+) object")
MAX_REASON = 500


class NoStudyToTrainError(RuntimeError):
    """Every study of a dataset failed."""


class SkippedStudies:
    """The studies skipped in one training run: image id -> reason, in the order they failed."""

    def __init__(self):
        self.reasons: dict[str, str] = {}

    def add(self, image_id: str, error: BaseException) -> None:
        if image_id not in self.reasons:
            self.reasons[image_id] = reason(error)
            logger.warning(f"training skips study '{image_id}': {self.reasons[image_id]}")

    def as_stats(self) -> list[dict[str, str]]:
        return [{"image": image_id, "reason": text} for image_id, text in self.reasons.items()]

    def write_to(self, stats_path: str) -> None:
        """Adds ``skipped`` to the train stats MONAI Label wrote (``/info/`` ``train_stats``)."""
        if not os.path.exists(stats_path):
            return
        with open(stats_path) as f:
            stats = json.load(f)
        stats["skipped"] = self.as_stats()
        partial = f"{stats_path}.partial"
        with open(partial, "w") as f:
            json.dump(stats, f, indent=2)
        os.replace(partial, stats_path)  # the server reads the stats at any time


def reason(error: BaseException) -> str:
    """``RandCropByPosNegLabeld: ValueError: ...``: the transform that failed and the original error."""
    transform, root = None, error
    while root.__cause__ is not None:
        found = _TRANSFORM.search(str(root))
        if found:
            transform = found.group(1).rsplit(".", 1)[-1]
        root = root.__cause__
    text = f"{type(root).__name__}: {root}"
    if transform:
        text = f"{transform}: {text}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class SkippingDataset(Dataset):
    """``dataset`` with failing items replaced by the next item that loads (see the module docstring).

    ``image_ids``: the study of each item, for ``skipped``. Raises ``NoStudyToTrainError`` naming every
    study and reason when no item loads.
    """

    def __init__(self, dataset: Dataset, image_ids: Sequence[str], skipped: SkippedStudies):
        self.dataset = dataset
        self.image_ids = list(image_ids)
        self.skipped = skipped
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        count = len(self.dataset)
        for step in range(count):
            i = (index + step) % count
            if i in self.failed:
                continue
            try:
                return self.dataset[i]
            except Exception as e:  # any failure of one study: it is reported, the others train
                self.failed.add(i)
                self.skipped.add(self.image_ids[i], e)
        failures = "; ".join(f"'{s['image']}': {s['reason']}" for s in self.skipped.as_stats())
        raise NoStudyToTrainError(f"no study could be read for training: {failures}")
