"""Per-structure figures of a label map over its CT: voxels, volume, HU statistics, centroid and bounding box.

Every figure comes from reductions over the foreground voxels (all structures at once), never one mask
per structure: ``np.bincount`` with weights gives the counts, HU sums and squared deviations per label; a
histogram of (label, slice index) per axis gives each structure's centroid and extent; one sort of the
foreground keyed by label, then HU, gives every structure's sorted HU values side by side, and the
percentiles are read at per-label offsets.

Coordinates are patient coordinates in the DICOM convention (LPS, millimetres): MONAI and NIfTI affines
map voxel indices to RAS, so the first two axes change sign.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

PERCENTILES = (5.0, 50.0, 95.0)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def measure(labels: Any, image: Any, affine_ras: Any, names: Mapping[int, str]) -> list[dict[str, Any]]:
    """Figures of every structure present in ``labels`` (3D integer array), over ``image`` (HU, same shape)
    whose voxel indices map to RAS millimetres by ``affine_ras`` (4 x 4). ``names``: label value -> name
    (an unnamed value is reported as ``label_<value>``). Returns one entry per present label, in label
    order; an empty list when nothing but background is present."""
    labels = np.asarray(labels)
    image = np.asarray(image)
    if labels.ndim != 3 or labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} must be one 3D grid")
    if labels.dtype.kind not in "ui" or (labels.size and labels.min() < 0):
        raise ValueError(f"labels must be non-negative integers, got {labels.dtype}")
    flat = labels.ravel()
    foreground = np.flatnonzero(flat)  # background is never reported: every reduction runs on the rest
    if not foreground.size:
        return []
    affine = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0

    label = flat[foreground].astype(np.intp)
    n_labels = int(label.max()) + 1
    counts = np.bincount(label, minlength=n_labels)
    present = np.flatnonzero(counts)
    hu = image.ravel()[foreground].astype(np.float64)
    mean = np.bincount(label, weights=hu, minlength=n_labels) / np.maximum(counts, 1)
    std = np.sqrt(np.bincount(label, weights=(hu - mean[label]) ** 2, minlength=n_labels) / np.maximum(counts, 1))
    percentiles = _percentiles(label, hu, counts, present)
    centroid_ijk, low_ijk, high_ijk = _extent(label, np.unravel_index(foreground, labels.shape), labels.shape, counts)

    centroid = _to_patient(affine, centroid_ijk[present])
    corners = np.stack([_to_patient(affine, np.where(corner, high_ijk[present], low_ijk[present])) for corner in _CORNERS])
    box_low, box_high = corners.min(axis=0), corners.max(axis=0)
    return [
        {
            "name": names.get(int(value), f"label_{int(value)}"),
            "label": int(value),
            "voxels": int(counts[value]),
            "volume_ml": float(counts[value] * voxel_ml),
            "hu_mean": float(mean[value]),
            "hu_std": float(std[value]),
            "hu_median": float(percentiles[50.0][i]),
            "hu_p5": float(percentiles[5.0][i]),
            "hu_p95": float(percentiles[95.0][i]),
            "centroid_lps_mm": centroid[i].tolist(),
            "bbox_lps_mm": [box_low[i].tolist(), box_high[i].tolist()],
        }
        for i, value in enumerate(present)
    ]


_CORNERS = [np.array([(c >> a) & 1 for a in range(3)], dtype=bool) for c in range(8)]


def _to_patient(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _percentiles(label: np.ndarray, hu: np.ndarray, counts: np.ndarray, present: np.ndarray) -> dict[float, np.ndarray]:
    """Per present label, the HU percentiles as ``np.percentile`` computes them (linear interpolation
    between the closest ranks). One sort on the key label * 2^k + (HU - min): HU values are integers in
    CT, and then the key is exact in float64; fractional HU keep ~1e-6 HU."""
    low = hu.min()
    span = 2.0 ** np.ceil(np.log2(hu.max() - low + 2.0))
    key = label * span + (hu - low)
    key.sort()
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])  # where each label's values start
    ordered = key - np.repeat(np.arange(len(counts), dtype=np.float64), counts) * span + low
    start, n = offsets[present], counts[present]
    result = {}
    for q in PERCENTILES:
        rank = q / 100.0 * (n - 1)
        below = np.floor(rank).astype(np.int64)
        above = np.minimum(below + 1, n - 1)
        result[q] = ordered[start + below] + (ordered[start + above] - ordered[start + below]) * (rank - below)
    return result


def _extent(label: np.ndarray, index: tuple[np.ndarray, ...], shape: tuple[int, ...], counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: centroid, lowest and highest voxel index on each axis, from one (label, index)
    histogram per axis of the voxels ``label`` and ``index`` (one array per axis) describe."""
    n_labels = len(counts)
    centroid, low, high = np.zeros((n_labels, 3)), np.zeros((n_labels, 3)), np.zeros((n_labels, 3))
    for axis, size in enumerate(shape):
        histogram = np.bincount(label * size + index[axis], minlength=n_labels * size).reshape(n_labels, size)
        centroid[:, axis] = histogram @ np.arange(size) / np.maximum(counts, 1)
        occupied = histogram > 0
        low[:, axis] = occupied.argmax(axis=1)
        high[:, axis] = size - 1 - occupied[:, ::-1].argmax(axis=1)
    return centroid, low, high
