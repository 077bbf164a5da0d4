"""What a saved label file says: checked against its image, with its segments as the file names
them (a Slicer ``.seg.nrrd``'s own table) or, for what the file does not say, as the client sent them.

A label that names its segments must name every value it holds: a value no segment names would train
nothing, or (values taken as channel indices) the wrong structure.
"""

from __future__ import annotations

from typing import Any, Mapping

import nibabel as nib
import nrrd
import numpy as np

from lib.conf import ConfError
from lib.datastore.image_check import DEFAULT_MAX_VOXELS, NRRD, ImageHeader, check_label_file, extension, read_header, read_volume
from lib.labels.saved import Segment, file_segments, label_segments
from lib.transforms.validate import InvalidImageError

MAX_SEGMENT_NAME = 256


def checked_label_info(
    path: str, image: ImageHeader, client_info: Mapping[str, Any] | None, max_voxels: int = DEFAULT_MAX_VOXELS
) -> dict[str, Any]:
    """The info to store with a label: the client's, with ``label_info`` = the label's segments
    [{name, idx, layer, code}] (the client's own list kept as ``client_label_info`` when the file
    overrode it) and ``layers`` for a layered ``.seg.nrrd``. Raises InvalidImageError or ConfError (422)."""
    header, voxels = check_label_file(path, image, max_voxels=max_voxels)
    info = dict(client_info or {})
    check_label_info(info.get("label_info"), header.layers)
    try:
        table = file_segments(nrrd.read_header(path), header.layers) if extension(path) in NRRD else []
    except ValueError as e:
        raise InvalidImageError(f"the segment table of the .seg.nrrd cannot be read: {e}") from None
    segments = label_segments(table, info)
    check_named(voxels, header.layers, segments)
    if table and info.get("label_info"):
        info["client_label_info"] = info["label_info"]
    info["label_info"] = [s.as_info() for s in segments]
    if header.layers > 1:
        info["layers"] = header.layers
    return info


def check_label_info(items: Any, layers: int = 1) -> None:
    """A client's ``label_info``: a list of {name, idx[, layer][, code]} with a printable name and an
    integer value 1..255 (and layer within the label's)."""
    if items is None:
        return
    if not isinstance(items, list):
        raise ConfError(f"'label_info' must be a list of {{name, idx}}, got {type(items).__name__}")
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfError(f"'label_info' item {n} must be an object {{name, idx}}, got {item!r:.80}")
        name, value, layer = item.get("name"), item.get("idx", item.get("id")), item.get("layer", 0)
        if not isinstance(name, str) or not 0 < len(name) <= MAX_SEGMENT_NAME or not name.isprintable():
            raise ConfError(f"'label_info' item {n}: 'name' must be 1 to {MAX_SEGMENT_NAME} printable characters, got {name!r:.80}")
        if not _integer_in(value, 1, 255):
            raise ConfError(f"'label_info' item {n} ({name!r}): 'idx' must be an integer 1..255, got {value!r:.80}")
        if not _integer_in(layer or 0, 0, layers - 1):
            raise ConfError(f"'label_info' item {n} ({name!r}): 'layer' must be an integer 0..{layers - 1}, got {layer!r:.80}")


def _integer_in(value: Any, low: int, high: int) -> bool:
    """An integer, also as JSON writes it (``1.0``) or as text (``"1"``), within [low, high]."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return isinstance(value, (int, float)) and float(value).is_integer() and low <= value <= high


def check_named(voxels: np.ndarray, layers: int, segments: list[Segment]) -> None:
    """Where any segment is named, every non-zero value of every layer must be."""
    if not segments:
        return
    stack = voxels if layers > 1 else voxels[None]
    for layer, values in enumerate(stack):
        counts = np.zeros(256, dtype=np.int64)
        for plane in values:  # a plane at a time: no copy of the whole label (values are 0..255 here)
            counts += np.bincount(np.asarray(plane, dtype=np.intp).ravel(), minlength=256)
        present = np.flatnonzero(counts)
        named = {s.value for s in segments if s.layer == layer}
        unnamed = sorted(int(v) for v in present if v and v not in named)
        if unnamed:
            where = f" in layer {layer}" if layers > 1 else ""
            raise InvalidImageError(
                f"label values {unnamed[:20]}{where} have no segment name: name every value in 'label_info' "
                f"(named: {sorted(named)})"
            )


def layered_as_nifti(path: str, out_path: str) -> str:
    """A layered ``.seg.nrrd`` (layers x X x Y x Z) as a NIfTI with the layers last, which MONAI's
    loaders read as channels (they cannot read the layered NRRD itself)."""
    header = read_header(path, layers_allowed=True)
    voxels = read_volume(path).reshape((header.layers, *header.shape))
    dtype = np.uint8 if voxels.max(initial=0) < 256 else np.uint16
    nib.save(nib.Nifti1Image(np.moveaxis(voxels, 0, -1).astype(dtype), header.affine), out_path)
    return out_path
