"""Saved labels for training, each with its image's id as the datastore knows it.

The id is never cut out of a file name (a DICOMweb series id ``1.2.826.0.1.3680043.8.498.1234`` has
dots, a label may be ``.nii.gz`` or ``.seg.nrrd``): each training item is matched to the datastore's
own ids by the label file the datastore gives for that id.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.datastore.label_file import layered_as_nifti
from lib.labels.saved import saved_segments

logger = logging.getLogger(__name__)


def labeled_items(datastore: Datastore, layered_dir: str) -> list[dict[str, Any]]:
    """``datastore.datalist()`` items with ``image_id``, ``segments`` (``Segment`` of the label's
    info) and, for a layered ``.seg.nrrd``, ``label`` pointing to its NIfTI copy in ``layered_dir``
    (made once per version of the file)."""
    tag = DefaultLabelTag.FINAL
    items = datastore.datalist()  # first: a DICOMweb datastore fetches new SEGs here
    ids = {}
    for image_id in datastore.get_labeled_images():
        uri = datastore.get_label_uri(image_id, tag)
        if uri:
            ids[os.path.realpath(uri)] = image_id
    labeled = []
    for item in items:
        image_id = ids.get(os.path.realpath(item["label"]))
        if image_id is None:
            logger.warning(f"training: no image of the datastore has the label {item['label']}; skipped")
            continue
        info = datastore.get_label_info(image_id, tag) or {}
        label = item["label"]
        if int(info.get("layers") or 1) > 1:
            label = _layered_copy(label, image_id, layered_dir)
        labeled.append({**item, "label": label, "image_id": image_id, "segments": saved_segments(info)})
    return labeled


def _layered_copy(path: str, image_id: str, folder: str) -> str:
    folder = os.path.join(folder, image_id)
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, f"{os.stat(path).st_mtime_ns}.nii.gz")
    if not os.path.exists(out):
        for old in glob.glob(os.path.join(glob.escape(folder), "*.nii.gz")):
            os.remove(old)
        layered_as_nifti(path, out + ".part.nii.gz")
        os.replace(out + ".part.nii.gz", out)
    return out
