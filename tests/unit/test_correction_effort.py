"""Correction effort on built label pairs whose answers are known by construction."""

from __future__ import annotations

import numpy as np

from lib.corrections.effort import common_values, effort
from lib.labels.names import NameResolver

SERVED_NAMES = {"spleen": 1, "liver": 5, "kidney_left": 3}


def _pair():
    served = np.zeros((40, 40, 20), dtype=np.uint8)
    served[2:12, 2:12, 2:8] = 1  # spleen: accepted
    served[15:35, 15:35, 5:15] = 5  # liver: the annotator adds a slab
    served[2:10, 25:35, 10:18] = 3  # left kidney: removed in part
    final = np.zeros_like(served)
    # Slicer's values are its list positions, not the model's channels.
    final[2:12, 2:12, 2:8] = 7  # "Spleen"
    final[15:35, 15:35, 5:15] = 4  # "Liver"
    final[15:35, 15:35, 15:17] = 4  # + 20*20*2 = 800 voxels on 2 slices
    final[2:10, 25:35, 10:14] = 2  # "Left Kidney": 8*10*4 = 320 of 640 kept
    final[30:34, 2:6, 0:3] = 9  # "Pancreas": missed by the model, 48 voxels on 3 slices
    segments = [("Spleen", 7), ("Liver", 4), ("Left Kidney", 2), ("Pancreas", 9)]
    return served, final, segments


def _record(served, final, segments):
    resolver = NameResolver(SERVED_NAMES)
    names, lut = common_values(SERVED_NAMES, segments, resolver.channel)
    return effort(served, final, names, lut)


def test_counts_per_structure():
    record = _record(*_pair())
    s = record["structures"]
    assert record["accepted"] == ["spleen"]
    assert record["edited"] == ["Pancreas", "kidney_left", "liver"]
    assert record["missed"] == ["Pancreas"] and record["deleted"] == []
    assert (s["liver"]["added"], s["liver"]["removed"], s["liver"]["slices"]) == (800, 0, 2)
    assert (s["kidney_left"]["added"], s["kidney_left"]["removed"], s["kidney_left"]["slices"]) == (0, 320, 4)
    assert s["kidney_left"]["dice"] == round(2 * 320 / (640 + 320), 6)
    assert (s["Pancreas"]["served"], s["Pancreas"]["final"], s["Pancreas"]["slices"]) == (0, 48, 3)
    assert s["spleen"] == {"served": 600, "final": 600, "added": 0, "removed": 0, "dice": 1.0, "slices": 0}
    assert "surface_dice" not in s["spleen"] and s["Pancreas"]["surface_dice"] == 0.0
    assert record["voxels_changed"] == 800 + 320 + 48
    # z 0..2 (pancreas), 14..17 (kidney: 14..17 removed), 15..16 (liver): 0,1,2,14,15,16,17
    assert record["slices_touched"] == 7


def test_blocks_do_not_change_the_answer(monkeypatch):
    """Slabs of slices are counted separately: the sum must not depend on their size."""
    import lib.corrections.effort as module

    served, final, segments = _pair()
    whole = _record(served, final, segments)
    monkeypatch.setattr(module, "SLICES_PER_BLOCK", 3)
    assert _record(served, final, segments) == whole


def test_unnamed_values_are_the_served_values():
    served = np.zeros((10, 10, 10), dtype=np.uint8)
    served[2:5, 2:5, 2:5] = 1
    final = served.copy()
    final[2:5, 2:5, 5] = 1
    names, lut = common_values(SERVED_NAMES, [], lambda name: None)
    record = effort(served, final, names, lut)
    assert record["edited"] == ["spleen"] and record["structures"]["spleen"]["added"] == 9


def test_surface_dice_tolerates_one_voxel():
    served = np.zeros((24, 24, 24), dtype=np.uint8)
    served[5:15, 5:15, 5:15] = 1
    served[18:22, 18:22, 18:22] = 3  # never edited: no surface Dice computed
    names, lut = common_values(SERVED_NAMES, [], lambda name: None)

    def nsd(final):
        return effort(served, final, names, lut)["structures"]["spleen"]["surface_dice"]

    shifted = served.copy()
    shifted[5:15, 5:15, 5:15] = 0
    shifted[6:16, 5:15, 5:15] = 1
    assert nsd(shifted) == 1.0  # every boundary voxel within one voxel of the other boundary
    far = served.copy()
    far[5:15, 5:15, 5:15] = 0
    far[9:19, 5:15, 5:15] = 1
    # Of each 10^3 cube's 488 boundary voxels, the faces and the rims of the sides further than one voxel
    # from the other cube do not match: a known share, computed the long way here.
    from scipy import ndimage

    a, b = served == 1, far == 1
    sa, sb = a & ~ndimage.binary_erosion(a), b & ~ndimage.binary_erosion(b)
    cube = np.ones((3, 3, 3), dtype=bool)
    expected = ((sa & ndimage.binary_dilation(sb, cube)).sum() + (sb & ndimage.binary_dilation(sa, cube)).sum()) / (sa.sum() + sb.sum())
    assert nsd(far) == round(float(expected), 6) and nsd(far) < 0.9
    assert "surface_dice" not in effort(served, far, names, lut)["structures"]["kidney_left"]
