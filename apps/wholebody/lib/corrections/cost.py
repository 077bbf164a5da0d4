"""What a correction costs an annotator, in seconds, from its effort record (``effort.effort``).

A correction of a good prediction costs a fraction of a full label: counting studies treats both alike.
The model here is what an annotator does in Slicer or OHIF: look at every structure the prediction shows
or the study holds (reviewed), open the ones that are wrong (edited: voxels added or removed, a missed
structure included), and paint or erase them slice by slice (each edited structure's axial slices touched).
The weights are stated, not fitted: change them with ``CostWeights`` and say so beside any figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class CostWeights:
    """Seconds per unit of work."""

    reviewed: float = 5.0  # a glance through one structure: accepted or not
    edited: float = 15.0  # selecting a structure to correct and checking the result
    slice_edited: float = 6.0  # brush or eraser strokes on one axial slice of one structure

    def describe(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v:g} s" for k, v in asdict(self).items())


def correction_cost(record: Mapping[str, Any], weights: CostWeights = CostWeights()) -> dict[str, float]:
    """Seconds of the correction, with its parts: structures reviewed, structures edited, slices edited
    (summed over the edited structures: two structures corrected on one slice are two strokes)."""
    structures, edited = record["structures"], record["edited"]
    slices = sum(int(structures[name]["slices"]) for name in edited)
    parts = {"reviewed": len(structures), "edited": len(edited), "slices_edited": slices}
    seconds = weights.reviewed * parts["reviewed"] + weights.edited * parts["edited"] + weights.slice_edited * slices
    return {**parts, "seconds": round(seconds, 3)}
