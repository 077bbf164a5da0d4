"""Studies that fail in training are skipped, named with the reason in the train stats, and the run goes on.

A study can still break training after the checks at save time: a file damaged on disk, a label saved
before those checks existed or put into the studies folder by hand, a transform that fails on one
study's content (``RandCropByPosNegLabeld`` with nothing to sample). MONAI's datasets have no skip, and
one such study used to end every run ``ERROR`` without naming it. ``SkippingDataset`` wraps the dataset a trainer reads: an
item whose loading or transforms raise is recorded once (image id, reason) and the next good item is
returned in its place, so the epoch keeps its length. Chosen over a check pass before training, which
would read and resample every study one more time and still miss failures of random transforms.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Sequence

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
        self.nothing_left = False  # every study of a dataset failed

    def __str__(self) -> str:
        return "; ".join(f"'{image_id}': {text}" for image_id, text in self.reasons.items())

    def add(self, image_id: str, error: BaseException, folders: Sequence[str] = ()) -> None:
        """``folders``: where the study's files are, left out of the reason (the stats are shown to clients)."""
        if image_id not in self.reasons:
            text = reason(error)
            for folder in folders:
                text = text.replace(folder.rstrip(os.sep) + os.sep, "")
            self.reasons[image_id] = text
            logger.warning(f"training skips study '{image_id}': {self.reasons[image_id]}")

    def as_stats(self) -> list[dict[str, str]]:
        return [{"image": image_id, "reason": text} for image_id, text in self.reasons.items()]

    def merge(self, reasons_by_rank: list[dict[str, str]]) -> None:
        """Adds the studies other ranks of a distributed run skipped (each rank reads only its own shard)."""
        for reasons in reasons_by_rank:
            for image_id, text in reasons.items():
                self.reasons.setdefault(image_id, text)


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

    ``datalist``: the dataset's items, ``image_id`` names the study of one for ``skipped``. Raises
    ``NoStudyToTrainError`` naming every study and reason when no item loads.
    """

    def __init__(self, dataset: Dataset, datalist: Sequence[dict[str, Any]], image_id: Callable[[dict], str], skipped: SkippedStudies):
        self.dataset = dataset
        self.datalist = datalist
        self.image_id = image_id
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
                item = self.datalist[i]
                folders = [os.path.dirname(v) for k, v in item.items() if k in ("image", "label") and isinstance(v, str)]
                self.skipped.add(self.image_id(item), e, folders)
        # Raised in a loader's thread this may never reach the trainer: the trainer asks ``nothing_left``.
        self.skipped.nothing_left = True
        raise NoStudyToTrainError(f"no study could be read for training: {self.skipped}")
