"""What a saved label file says: checked against its image, with its segments as the file names
them (a Slicer ``.seg.nrrd``'s own table) or, for what the file does not say, as the client sent them."""

from __future__ import annotations

from typing import Any, Mapping

import nibabel as nib
import nrrd
import numpy as np

from lib.datastore.image_check import NRRD, ImageHeader, check_label_file, extension, read_header, read_volume
from lib.labels.saved import file_segments, label_segments


def checked_label_info(path: str, image: ImageHeader, client_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The info to store with a label: the client's, with ``label_info`` = the label's segments
    [{name, idx, layer, code}] (the client's own list kept as ``client_label_info`` when the file
    overrode it) and ``layers`` for a layered ``.seg.nrrd``. Raises InvalidImageError (422)."""
    header, _ = check_label_file(path, image)
    info = dict(client_info or {})
    table = file_segments(nrrd.read_header(path), header.layers) if extension(path) in NRRD else []
    segments = label_segments(table, info)
    if table and info.get("label_info"):
        info["client_label_info"] = info["label_info"]
    info["label_info"] = [s.as_info() for s in segments]
    if header.layers > 1:
        info["layers"] = header.layers
    return info


def layered_as_nifti(path: str, out_path: str) -> str:
    """A layered ``.seg.nrrd`` (layers x X x Y x Z) as a NIfTI with the layers last, which MONAI's
    loaders read as channels (they cannot read the layered NRRD itself)."""
    header = read_header(path, layers_allowed=True)
    voxels = read_volume(path).reshape((header.layers, *header.shape))
    dtype = np.uint8 if voxels.max(initial=0) < 256 else np.uint16
    nib.save(nib.Nifti1Image(np.moveaxis(voxels, 0, -1).astype(dtype), header.affine), out_path)
    return out_path
