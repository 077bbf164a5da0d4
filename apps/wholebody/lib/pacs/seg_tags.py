"""Which DICOM SEGs in the PACS are labels to train on.

A SEG this app writes carries the datastore tag it was saved under as its ContentLabel: ``final`` (a
label a person saved) as SEGMENTATION, as every SEG did before other tags were stored; any other tag
(a model's output kept for review: ``/batch/infer``, ``python -m lib.batch --to-pacs``) as the tag
itself, with AUTOMATIC segments. The PACS datastore never imports those as labels to train on.
"""

from __future__ import annotations

import re

MANUFACTURER_MODEL = "wholebody app"
FINAL_TAG = "final"  # MONAI Label's DefaultLabelTag.FINAL
FINAL_CONTENT_LABEL = "SEGMENTATION"


def content_label(label_tag: str) -> str:
    """ContentLabel (DICOM CS: A-Z, 0-9, space, _; 16 characters) of a SEG saved under ``label_tag``."""
    if label_tag == FINAL_TAG:
        return FINAL_CONTENT_LABEL
    label = re.sub(r"[^A-Z0-9_ ]", "_", label_tag.upper())[:16]
    return label if label != FINAL_CONTENT_LABEL else "TAG_SEGMENTATION"


def is_training_label(seg) -> bool:
    """Whether a SEG in the PACS (a pydicom Dataset of its metadata) is a label to train on: every SEG
    but a model's output that this app stored under a tag other than ``final``."""
    ours = str(seg.get("ManufacturerModelName", "")) == MANUFACTURER_MODEL
    return not ours or str(seg.get("ContentLabel", FINAL_CONTENT_LABEL)) == FINAL_CONTENT_LABEL
