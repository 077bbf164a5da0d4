"""Which SEG series a STOW-RS request stored, read from the PACS's answer (PS3.18 Store Instances Response,
DICOM JSON): each stored instance's Referenced SOP Class UID and its Retrieve URL, which names its series.
An answer in XML, or one that is not an answer at all, names none: such a SEG is imported at the next training."""

from __future__ import annotations

import json
import re

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
RETRIEVE_URL = "00081190"
SERIES_IN_URL = re.compile(r"/series/([0-9]{1,64}(?:\.[0-9]{1,64}){0,63})(?:/|$)")


def stored_seg_series(answer: bytes) -> list[str]:
    try:
        stored = json.loads(answer).get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    except (ValueError, AttributeError):
        return []
    series = []
    for item in stored if isinstance(stored, list) else []:
        if not isinstance(item, dict) or _first(item, REFERENCED_SOP_CLASS) != SEG_STORAGE:
            continue
        found = SERIES_IN_URL.search(str(_first(item, RETRIEVE_URL) or ""))
        if found and len(found.group(1)) <= 64 and found.group(1) not in series:
            series.append(found.group(1))
    return series


def _first(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0] if isinstance(values, list) else None
