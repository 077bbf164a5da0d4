"""Per-structure figures of a label map over its CT: voxels, volume, HU statistics, centroid and bounding box.

Every figure comes from reductions over the labelled voxels (all structures at once), never one mask per
structure, in slabs of the first axis so that memory stays bounded: ``np.bincount`` gives per label the
voxel counts, the HU sums (weights), one (label, index) histogram per axis (centroids and extents) and, for
integer HU (CT as stored), a (label, HU) histogram from which deviations and percentiles are read exactly
without sorting. Fractional HU instead take one sort of the foreground keyed by label, then HU, which puts
every structure's values side by side; the percentiles are read at per-label offsets.

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
    n_labels = int(labels.max()) + 1 if labels.size else 1
    if n_labels == 1:
        return []
    affine = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0

    sums = _Sums(labels, image, n_labels)
    counts, mean = sums.counts, sums.hu_sum / np.maximum(sums.counts, 1)
    present = np.flatnonzero(counts[1:]) + 1
    if sums.hu_histogram is not None:
        std, percentiles = _from_histogram(sums.hu_histogram, sums.hu_low, counts, mean, present)
    else:
        std, percentiles = _by_sorting(labels, image, n_labels, counts, mean, present)
    size = np.maximum(counts, 1)[:, None]
    centroid_ijk = np.stack([h @ np.arange(h.shape[1]) for h in sums.axis_histograms], axis=1) / size
    occupied = [h > 0 for h in sums.axis_histograms]
    low_ijk = np.stack([o.argmax(axis=1) for o in occupied], axis=1)
    high_ijk = np.stack([o.shape[1] - 1 - o[:, ::-1].argmax(axis=1) for o in occupied], axis=1)

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


class _Sums:
    """One pass over the volume in slabs of the first axis (bounded memory on a 512 x 512 x 400 CT), each
    reduced to its labelled voxels: per label, voxel counts, HU sums, a (label, index) histogram per axis
    and, while every HU value is an integer (CT as scanners store it), a (label, HU) histogram."""

    SLAB_VOXELS = 1 << 22

    def __init__(self, labels: np.ndarray, image: np.ndarray, n_labels: int):
        ny, nz = labels.shape[1:]
        self.counts = np.zeros(n_labels, np.int64)
        self.hu_sum = np.zeros(n_labels)
        self.axis_histograms = [np.zeros((n_labels, n), np.int64) for n in labels.shape]
        self.hu_low = float(image.min())
        span = int(float(image.max()) - self.hu_low) + 1
        self.hu_histogram = np.zeros(n_labels * span, np.int64) if span <= MAX_HU_BINS else None
        step = max(1, self.SLAB_VOXELS // (ny * nz))
        for x0 in range(0, labels.shape[0], step):
            slab = labels[x0 : x0 + step].reshape(-1)
            inside = np.flatnonzero(slab)  # background is never reported
            if not inside.size:
                continue
            label = slab[inside].astype(np.intp)
            hu = image[x0 : x0 + step].reshape(-1)[inside].astype(np.float64)
            self.counts += np.bincount(label, minlength=n_labels)
            self.hu_sum += np.bincount(label, weights=hu, minlength=n_labels)
            index = (inside // (ny * nz) + x0, inside // nz % ny, inside % nz)
            for histogram, at in zip(self.axis_histograms, index):
                n = histogram.shape[1]
                histogram += np.bincount(label * n + at, minlength=n_labels * n).reshape(n_labels, n)
            if self.hu_histogram is not None:
                offset = hu - self.hu_low
                if np.array_equal(offset, np.floor(offset)):
                    self.hu_histogram += np.bincount(label * span + offset.astype(np.intp), minlength=self.hu_histogram.size)
                else:
                    self.hu_histogram = None  # fractional HU: the percentiles need a sort
        if self.hu_histogram is not None:
            self.hu_histogram = self.hu_histogram.reshape(n_labels, span)


# Integer HU over at most this range are counted per label (16 bits: any stored CT); wider ranges are sorted.
MAX_HU_BINS = 1 << 16


def _rank_values(q: float, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.percentile``'s linear method: the q-th percentile of n sorted values lies between ranks
    ``below`` and ``above``, at ``fraction`` of the way."""
    rank = q / 100.0 * (n - 1)
    below = np.floor(rank).astype(np.int64)
    return below, np.minimum(below + 1, n - 1), rank - below


def _from_histogram(histogram: np.ndarray, low: float, counts: np.ndarray, mean: np.ndarray, present: np.ndarray):
    """Deviations and percentiles from the (label, HU) histogram: exact for integer HU, no sort."""
    values = low + np.arange(histogram.shape[1])
    std = np.sqrt(np.einsum("lh,lh->l", histogram, (values[None, :] - mean[:, None]) ** 2) / np.maximum(counts, 1))
    cumulative = np.cumsum(histogram[present], axis=1)
    n = counts[present]
    percentiles = {}
    for q in PERCENTILES:
        below, above, fraction = _rank_values(q, n)
        # the value of rank r: the first HU whose cumulative count exceeds r, per label
        at_below = low + (cumulative <= below[:, None]).sum(axis=1)
        at_above = low + (cumulative <= above[:, None]).sum(axis=1)
        percentiles[q] = at_below + (at_above - at_below) * fraction
    return std, percentiles


def _by_sorting(labels: np.ndarray, image: np.ndarray, n_labels: int, counts: np.ndarray, mean: np.ndarray, present: np.ndarray):
    """Deviations and percentiles of fractional HU: one sort of the foreground on the key
    label * 2^k + (HU - min), which puts every label's values side by side, in order (~1e-6 HU)."""
    flat = labels.reshape(-1)
    foreground = np.flatnonzero(flat)
    label = flat[foreground].astype(np.intp)
    hu = image.reshape(-1)[foreground].astype(np.float64)
    std = np.sqrt(np.bincount(label, weights=(hu - mean[label]) ** 2, minlength=n_labels) / np.maximum(counts, 1))
    low = hu.min()
    span = 2.0 ** np.ceil(np.log2(hu.max() - low + 2.0))
    key = label * span + (hu - low)
    key.sort()
    offsets = np.concatenate([[0], np.cumsum(counts[1:])])  # where label v's values start: offsets[v - 1]
    ordered = key - np.repeat(np.arange(1, n_labels, dtype=np.float64), counts[1:]) * span + low
    start, n = offsets[present - 1], counts[present]
    percentiles = {}
    for q in PERCENTILES:
        below, above, fraction = _rank_values(q, n)
        percentiles[q] = ordered[start + below] + (ordered[start + above] - ordered[start + below]) * fraction
    return std, percentiles


_CORNERS = [np.array([(c >> a) & 1 for a in range(3)], dtype=bool) for c in range(8)]


def _to_patient(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]
