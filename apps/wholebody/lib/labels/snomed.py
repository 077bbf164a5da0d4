"""SNOMED CT codes of segment names, from ``snomed_codes.json``: what a DICOM SEG writes for a
segment (``lib.pacs.seg``) and what a SEG's codes say when it is read back (``lib.labels.names``).

Left / right go into the Segmented Property Type Modifier (SCT 7771000 / 24028007), as dcmqi and
3D Slicer do; a structure without a code gets the generic Tissue / Tissue (SCT 85756007). Every code
of the table appears in DICOM PS3.16 (as shipped in ``pydicom.sr``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache

SCT = "SCT"

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "snomed_codes.json"), encoding="utf-8") as _f:
    _TABLE = json.load(_f)


def _pair(value: list) -> tuple[str, str]:
    return str(value[0]), str(value[1])


ANATOMICAL_STRUCTURE = _pair(_TABLE["categories"]["anatomical_structure"])
MORPHOLOGICALLY_ABNORMAL = _pair(_TABLE["categories"]["morphologically_abnormal"])
TISSUE = _pair(_TABLE["categories"]["tissue"])
LEFT = _pair(_TABLE["laterality"]["left"])
RIGHT = _pair(_TABLE["laterality"]["right"])
SIDES = {"left": LEFT, "right": RIGHT}

#: structure words (no side, no level) -> SNOMED CT type; substitutes are the tissue a structure
#: without a code of its own is made of
STRUCTURE_CODES: dict[str, tuple[str, str]] = {k: _pair(v) for k, v in _TABLE["structures"].items()}
SUBSTITUTE_CODES: dict[str, tuple[str, str]] = {k: _pair(v) for k, v in _TABLE["substitutes"].items()}
SIDED_CODES: dict[str, dict[str, tuple[str, str]]] = {
    k: {side: _pair(v) for side, v in sides.items()} for k, sides in _TABLE["sided"].items()
}
LEVEL_CODES: dict[str, tuple[str, str]] = {k: _pair(v) for k, v in _TABLE["levels"].items()}
FINDING_CODES: dict[str, tuple[str, str]] = {k: _pair(v) for k, v in _TABLE["findings"].items()}

_LEVEL = re.compile(r"^(?:[ctls]\d{1,2}|\d+)$")  # vertebra levels (L3, T12, C1, S1) and rib numbers


@dataclass(frozen=True)
class SegmentCodes:
    category: tuple[str, str]
    type: tuple[str, str]
    modifier: tuple[str, str] | None = None
    #: the type is the tissue the structure is made of, not the structure (a hip is "Bone")
    substitute: bool = False

    @property
    def generic(self) -> bool:
        return self.type == TISSUE

    @property
    def specific(self) -> bool:
        """The codes name this structure and no other: usable to recognise it."""
        return not (self.generic or self.substitute)


def name_words(name: str) -> list[str]:
    """``"Kidney (left)"`` -> ``["kidney", "left"]``: lower case, split at spaces and punctuation."""
    return [w for w in re.split(r"[\s_\-/(),;:.]+", str(name).strip().lower()) if w]


def split_side(words: list[str]) -> tuple[str | None, list[str]]:
    """(the side a name says, or None; its other words)."""
    side = next((w for w in words if w in SIDES), None)
    return side, [w for w in words if w not in SIDES]


@lru_cache(maxsize=None)
def _by_meaning() -> dict[tuple[str, str | None], tuple[tuple[str, str], bool]]:
    """(meaning words without the side, side of a sided code) -> (code, is a finding): lets a
    segment named by its SNOMED meaning (``Clavicle``, ``Left atrium``) be coded like the table's names."""
    index: dict[tuple[str, str | None], tuple[tuple[str, str], bool]] = {}
    for table, finding in ((STRUCTURE_CODES, False), (LEVEL_CODES, False), (FINDING_CODES, True)):
        for code in table.values():
            side, rest = split_side(name_words(code[1]))
            index.setdefault((" ".join(rest), None), (code, finding))
    for sides in SIDED_CODES.values():
        for side, code in sides.items():
            index[(" ".join(split_side(name_words(code[1]))[1]), side)] = (code, False)
    return index


def segment_codes(name: str) -> SegmentCodes:
    """SNOMED CT category, type and laterality of a structure name such as ``kidney_left``,
    ``left kidney``, ``Kidney (left)``, ``vertebrae_L3``, ``hepatic tumor`` or a SNOMED meaning
    (``Left atrium``); generic Tissue when unknown."""
    words = name_words(name)
    side, sideless = split_side(words)
    rest = [w for w in sideless if not _LEVEL.match(w)]
    modifier = SIDES.get(side) if side else None

    for word in rest:
        if word in FINDING_CODES:
            return SegmentCodes(MORPHOLOGICALLY_ABNORMAL, FINDING_CODES[word], modifier)

    key = " ".join(rest)
    if side and key in SIDED_CODES:
        return SegmentCodes(ANATOMICAL_STRUCTURE, SIDED_CODES[key][side])
    level_key = " ".join(sideless)
    if level_key in LEVEL_CODES:
        return SegmentCodes(ANATOMICAL_STRUCTURE, LEVEL_CODES[level_key])
    # "lung upper lobe", "upper lobe lung", "lung_upper_lobe" are the same structure.
    for table, substitute in ((STRUCTURE_CODES, False), (SUBSTITUTE_CODES, True)):
        by_words = {frozenset(k.split()): v for k, v in table.items()}
        code = table.get(key) or by_words.get(frozenset(rest))
        if code:
            return SegmentCodes(ANATOMICAL_STRUCTURE, code, _modifier(code, modifier), substitute)
    meaning = _by_meaning().get((" ".join(sideless), side)) or _by_meaning().get((" ".join(sideless), None))
    if meaning:
        code, finding = meaning
        if code in (c for sides in SIDED_CODES.values() for c in sides.values()):
            return SegmentCodes(ANATOMICAL_STRUCTURE, code)
        return SegmentCodes(MORPHOLOGICALLY_ABNORMAL if finding else ANATOMICAL_STRUCTURE, code, _modifier(code, modifier))
    return SegmentCodes(TISSUE, TISSUE, modifier)


def _modifier(code: tuple[str, str], modifier: tuple[str, str] | None) -> tuple[str, str] | None:
    # The middle lobe is the right lung's: its code says the side.
    return None if "right" in name_words(code[1]) or "left" in name_words(code[1]) else modifier
