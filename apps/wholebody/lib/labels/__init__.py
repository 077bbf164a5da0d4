"""Label tables, kept as data next to the code (channel index = label value)."""

from __future__ import annotations

import json
import os
from functools import lru_cache

LABELS_DIR = os.path.dirname(os.path.abspath(__file__))


@lru_cache(maxsize=None)
def _table(name: str) -> dict[int, str]:
    with open(os.path.join(LABELS_DIR, f"{name}.json")) as f:
        return {int(k): v for k, v in json.load(f).items()}


def wholebody_labels() -> dict[str, int]:
    """The 104 TotalSegmentator v1 structures of the wholeBody bundle, name -> channel (1..104)."""
    return {name: idx for idx, name in _table("wholebody_channels").items() if idx > 0}


SPLEEN_LABELS = {"spleen": 1}
