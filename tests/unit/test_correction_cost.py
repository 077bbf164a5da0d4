"""The active-learning study's correction cost on built label pairs whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from lib.corrections.cost import CostWeights, correction_cost
from lib.corrections.effort import effort

NAMES = {1: "liver", 2: "spleen", 3: "aorta"}
IDENTITY = np.arange(256, dtype=np.int64)


def _served() -> np.ndarray:
    served = np.zeros((12, 12, 8), dtype=np.uint8)
    served[1:5, 1:5, 0:4] = 1  # liver on slices 0..3
    served[6:10, 6:10, 2:8] = 2  # spleen on slices 2..7
    return served


def test_a_perfect_prediction_costs_the_review_of_each_structure_alone():
    served = _served()
    cost = correction_cost(effort(served, served.copy(), NAMES, IDENTITY))
    assert cost == {"reviewed": 2, "edited": 0, "slices_edited": 0, "seconds": 2 * 5.0}


def test_edits_cost_per_structure_opened_and_per_slice_painted():
    served = _served()
    final = served.copy()
    final[6:10, 6:10, 6:8] = 0  # spleen erased on its last 2 slices
    final[1:3, 8:11, 1:4] = 3  # aorta, missed by the model, painted on 3 slices
    cost = correction_cost(effort(served, final, NAMES, IDENTITY))
    # liver accepted; spleen (2 slices) and aorta (3 slices) edited: 3 reviewed, 2 edited, 5 slice edits
    assert cost == {"reviewed": 3, "edited": 2, "slices_edited": 5, "seconds": 3 * 5.0 + 2 * 15.0 + 5 * 6.0}

    heavy = correction_cost(effort(served, final, NAMES, IDENTITY), CostWeights(reviewed=1.0, edited=0.0, slice_edited=10.0))
    assert heavy["seconds"] == pytest.approx(3 * 1.0 + 5 * 10.0)


def test_a_structure_edited_on_one_slice_where_another_is_edited_counts_both():
    served = _served()
    final = served.copy()
    final[6:10, 6:10, 3] = 1  # slice 3: spleen voxels relabelled liver, both structures change there
    cost = correction_cost(effort(served, final, NAMES, IDENTITY))
    assert (cost["edited"], cost["slices_edited"]) == (2, 2)


def test_the_weights_say_what_they_are():
    assert CostWeights().describe() == "reviewed 5 s, edited 15 s, slice edited 6 s"
