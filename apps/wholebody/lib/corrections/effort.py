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


def _near(mask: np.ndarray) -> np.ndarray:
    """Dilation by the 3x3x3 cube, as three 1-D maxima (the cube is separable): far cheaper on large boxes."""
    near = mask.view(np.uint8)
    for axis in range(mask.ndim):
        near = ndimage.maximum_filter1d(near, 3, axis=axis, mode="constant")
    return near.astype(bool)


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


def boundary(label: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another value: every structure's boundary in one pass of comparisons."""
    edge = np.zeros_like(label, dtype=bool)  # in the label's memory order (nibabel's are Fortran)
    for axis in range(label.ndim):
        ahead = [slice(None)] * label.ndim
        behind = [slice(None)] * label.ndim
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        differs = label[tuple(ahead)] != label[tuple(behind)]
        edge[tuple(ahead)] |= differs
        edge[tuple(behind)] |= differs
    return edge


def surface_dice(served_edge, final_edge, served_in, final_in, served_total: int, final_total: int) -> float:
    """Surface Dice with a tolerance of 1 voxel (26-neighbourhood): the share of both boundaries within one
    voxel of the other. Computed in a box around the structure's changed voxels (``*_edge``: boundaries,
    ``*_in``: the structure, both cropped to it): outside it both boundaries are the same voxels."""
    a, b = served_edge & served_in, final_edge & final_in
    unmatched = int((a & ~_near(b)).sum()) + int((b & ~_near(a)).sum())
    total = served_total + final_total
    return (total - unmatched) / total if total else 1.0


def effort(served: np.ndarray, final: np.ndarray, names: Mapping[int, str], lut: np.ndarray) -> dict[str, Any]:
    """The correction record of one saved label. ``served`` and ``final`` are label arrays of one grid
    (axial slices on the last axis); ``names``/``lut`` from :func:`common_values`.

    Per structure present in either: voxels served, final, added, removed, Dice, surface Dice (edited
    only), axial slices touched; then which were accepted unchanged, edited, missed (added, none
    served) and deleted (served, none kept)."""
    size = int(max(max(names, default=0), int(served.max(initial=0)), int(lut.max())) + 1)
    counts = np.zeros((size, size), dtype=np.int64)
    depth = served.shape[-1]
    touched = np.zeros((depth, size), dtype=bool)  # axial slice x structure: changed there
    where: list[tuple[np.ndarray, ...]] = []  # changed voxels: (x, y, z, served value, final value)
    for start in range(0, depth, SLICES_PER_BLOCK):
        p = np.asarray(served[..., start : start + SLICES_PER_BLOCK], dtype=np.int32)
        f = lut[np.asarray(final[..., start : start + SLICES_PER_BLOCK], dtype=np.intp)]
        counts += np.bincount((p * size + f).ravel(order="K"), minlength=size * size).reshape(size, size)
        changed = p != f
        if changed.any():
            x, y, z = (c.astype(np.int32) for c in np.nonzero(changed))
            z += start
            was, now = p[changed], f[changed]
            touched[z, was] = True
            touched[z, now] = True
            where.append((x, y, z, was, now))
    slices = touched.sum(axis=0)
    changed_at = [np.concatenate(c) for c in zip(*where)] if where else None
    served_edge, final_edge = boundary(served), boundary(final)
    edge_counts = (
        np.bincount(served[served_edge].astype(np.int64), minlength=size)[:size],
        np.bincount(lut[final[final_edge]], minlength=size)[:size],
    )

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
            entry["surface_dice"] = 0.0
            if served_n and final_n:
                box = _box_of(changed_at, value, served.shape)
                entry["surface_dice"] = round(
                    surface_dice(
                        served_edge[box], final_edge[box], served[box] == value, lut[final[box]] == value,
                        int(edge_counts[0][value]), int(edge_counts[1][value]),
                    ),
                    6,
                )
        structures[names.get(value, str(value))] = entry
    return {
        "structures": structures,
        "accepted": sorted(n for n, e in structures.items() if e["served"] and not e["added"] and not e["removed"]),
        "edited": sorted(n for n, e in structures.items() if e["added"] or e["removed"]),
        "missed": sorted(n for n, e in structures.items() if e["final"] and not e["served"]),
        "deleted": sorted(n for n, e in structures.items() if e["served"] and not e["final"]),
        "voxels_changed": int(sum(e["added"] + e["removed"] for e in structures.values())),
        "slices_touched": int(touched[:, 1:].any(axis=1).sum()),
    }


def _box_of(changed_at: list[np.ndarray], value: int, shape: tuple[int, ...], margin: int = 3) -> tuple[slice, ...]:
    """The box around a structure's changed voxels, with the margin beyond which boundaries are unchanged."""
    x, y, z, p, f = changed_at
    mine = (p == value) | (f == value)
    return tuple(slice(max(int(c[mine].min()) - margin, 0), min(int(c[mine].max()) + margin + 1, n)) for c, n in zip((x, y, z), shape))
