"""Correction effort per structure: a served prediction against the label an annotator saved.

Both labels are first put in one value space (the prediction's: its structure names -> values; a saved
structure the prediction does not name gets a value of its own), then one ``bincount`` of the pair code
``pred * K + final`` per block of axial slices gives every structure's overlap, voxels added and removed.
Slices touched come from the changed voxels alone, surface Dice only for the structures that changed.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
from scipy import ndimage

# Axial slices per bincount: bounds the temporary int arrays to a few slices of the volume.
SLICES_PER_BLOCK = 16
_CUBE = np.ones((3, 3, 3), dtype=bool)


def common_values(served_names: Mapping[str, int], final_segments: Iterable[tuple[str, int]], resolve) -> tuple[dict[int, str], np.ndarray]:
    """(value -> structure name in the common space, lookup table final value -> common value).

    ``resolve(name)`` gives the served value a saved segment's name stands for (None if it names no
    served structure); a final value without a name is taken as the served value it equals."""
    names = {int(v): str(n) for n, v in served_names.items() if int(v) > 0}
    lut = np.arange(256, dtype=np.int64)
    extra = max(names, default=0)
    for name, value in final_segments:
        found = resolve(name)
        if found is None:
            extra += 1
            found = extra
            names[found] = str(name)
        lut[int(value)] = found
    return names, lut


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Surface Dice with a tolerance of 1 voxel (26-neighbourhood): the share of both boundaries that lies
    within one voxel of the other."""
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
    sa, sb = _surface(a[box]), _surface(b[box])
    total = int(sa.sum()) + int(sb.sum())
    if not total:
        return 1.0
    near_b, near_a = ndimage.binary_dilation(sb, _CUBE), ndimage.binary_dilation(sa, _CUBE)
    return float((sa & near_b).sum() + (sb & near_a).sum()) / total


def effort(served: np.ndarray, final: np.ndarray, names: Mapping[int, str], lut: np.ndarray) -> dict[str, Any]:
    """The correction record of one saved label. ``served`` and ``final`` are label arrays of one grid
    (axial slices on the last axis); ``names``/``lut`` from :func:`common_values`.

    Per structure present in either: voxels served, final, added, removed, Dice, surface Dice (edited
    only), axial slices touched; then which were accepted unchanged, edited, missed (added, none
    served) and deleted (served, none kept)."""
    size = int(max(max(names, default=0), int(served.max(initial=0)), int(lut.max())) + 1)
    counts = np.zeros((size, size), dtype=np.int64)
    touched: list[np.ndarray] = []
    depth = served.shape[-1]
    for start in range(0, depth, SLICES_PER_BLOCK):
        p = np.asarray(served[..., start : start + SLICES_PER_BLOCK], dtype=np.int64)
        f = lut[np.asarray(final[..., start : start + SLICES_PER_BLOCK], dtype=np.intp)]
        counts += np.bincount((p * size + f).ravel(), minlength=size * size).reshape(size, size)
        changed = p != f
        if changed.any():
            z = np.nonzero(changed)[-1] + start
            touched.append(np.unique(np.concatenate([z * size + p[changed], z * size + f[changed]])))
    slices = np.bincount(np.concatenate(touched) % size, minlength=size) if touched else np.zeros(size, dtype=np.int64)

    structures: dict[str, dict[str, Any]] = {}
    for value in range(1, size):
        kept, served_n, final_n = int(counts[value, value]), int(counts[value].sum()), int(counts[:, value].sum())
        if not served_n and not final_n:
            continue
        added, removed = final_n - kept, served_n - kept
        entry = {
            "served": served_n,
            "final": final_n,
            "added": added,
            "removed": removed,
            "dice": round(2.0 * kept / (served_n + final_n), 6),
            "slices": int(slices[value]),
        }
        if added or removed:
            entry["surface_dice"] = round(_surface_dice_of(served, final, lut, value), 6) if served_n and final_n else 0.0
        structures[names.get(value, str(value))] = entry
    return {
        "structures": structures,
        "accepted": sorted(n for n, e in structures.items() if e["served"] and not e["added"] and not e["removed"]),
        "edited": sorted(n for n, e in structures.items() if e["added"] or e["removed"]),
        "missed": sorted(n for n, e in structures.items() if e["final"] and not e["served"]),
        "deleted": sorted(n for n, e in structures.items() if e["served"] and not e["final"]),
        "voxels_changed": int(sum(e["added"] + e["removed"] for e in structures.values())),
        "slices_touched": int(len(np.unique(np.concatenate(touched) // size)) if touched else 0),
    }


def _surface_dice_of(served: np.ndarray, final: np.ndarray, lut: np.ndarray, value: int) -> float:
    """Surface Dice of one structure, on the bounding box of both (the masks of the whole volume are
    only boolean)."""
    a = served == value
    b = np.isin(final, np.flatnonzero(lut == value))
    return surface_dice(a, b)
