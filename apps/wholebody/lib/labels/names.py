"""Which channel of a model a segment is, whatever tool named it.

Annotators' segments arrive spelled as 3D Slicer, OHIF, TotalSegmentator (v1 ``kidney_left``, v2),
VISTA3D (``left kidney``) or a person (``Kidney (left)``, ``Left Kidney``) spell them, or as the
SNOMED CT codes of a DICOM SEG. One ``NameResolver`` per model maps each of them to that model's
channel, in this order:

1. the name's key: lower case, punctuation and ``_`` as spaces, word order free (so the side may
   stand anywhere), ``words`` of ``synonyms.json`` replaced;
2. a name of the same structure (``same`` of ``synonyms.json``: ``urinary bladder`` = ``bladder``);
3. the SNOMED CT type and side (``lib.labels.snomed``, the codes a SEG is written with), when
   exactly one channel of the model has them and they name the structure itself (not the generic
   Tissue, nor the tissue a structure without a code is made of).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

from lib.labels.snomed import name_words, segment_codes, split_side

BACKGROUND = "background"

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "synonyms.json"), encoding="utf-8") as _f:
    _SYNONYMS = json.load(_f)

_WORDS: dict[str, str] = _SYNONYMS["words"]


def name_key(name: str) -> str:
    """``"Kidney (left)"``, ``"kidney_left"``, ``"Left Kidney"`` -> ``"kidney left"``."""
    return " ".join(sorted(_WORDS.get(w, w) for w in name_words(name)))


@lru_cache(maxsize=None)
def _same() -> dict[str, frozenset[str]]:
    """Key of a name (sides removed) -> keys of every name of that structure."""
    groups: dict[str, frozenset[str]] = {}
    for names in _SYNONYMS["same"]:
        keys = frozenset(name_key(n) for n in names)
        for key in keys:
            groups[key] = keys
    return groups


def equivalent_keys(name: str) -> list[str]:
    """The name's key, then the keys of the other names of its structure (same side)."""
    key = name_key(name)
    side, rest = split_side(key.split())
    keys = [key]
    for other in sorted(_same().get(" ".join(rest), ())):
        candidate = " ".join(sorted(other.split() + ([side] if side else [])))
        if candidate not in keys:
            keys.append(candidate)
    return keys


Code = tuple[str, "str | None"]  # (SNOMED CT type value, laterality modifier value or None)


def name_code(name: str) -> Code | None:
    """The SNOMED CT type and side a SEG gets for this name, when they name the structure itself."""
    codes = segment_codes(name)
    if not codes.specific:
        return None
    return codes.type[0], codes.modifier[0] if codes.modifier else None


@dataclass(frozen=True)
class Resolved:
    channel: int
    structure: str  # the model's name of the channel
    by: str  # "name", "synonym" or "snomed"

    def answer(self) -> dict[str, Any]:
        return {"structure": self.structure, "channel": self.channel, "by": self.by}


class NameResolver:
    """Segment name (or SNOMED CT code) -> channel of one model.

    ``channels``: the model's structure names -> channel (no background). Two names of one channel
    are fine (a class table and its learned classes); a channel's first name is its structure name.
    """

    def __init__(self, channels: Mapping[str, int]):
        self.channels = {str(k): int(v) for k, v in channels.items() if int(v) > 0}
        self._keys: dict[str, tuple[int, str]] = {}
        codes: dict[Code, set[tuple[int, str]]] = {}
        for name, channel in self.channels.items():
            self._keys.setdefault(name_key(name), (channel, name))
            code = name_code(name)
            if code:
                codes.setdefault(code, set()).add((channel, name))
        self._synonyms: dict[str, tuple[int, str]] = {}
        for name, channel in self.channels.items():
            for key in equivalent_keys(name)[1:]:
                self._synonyms.setdefault(key, (channel, name))
        # A code several channels share (ribs, vertebrae, muscles) names none of them.
        self._codes = {code: next(iter(found)) for code, found in codes.items() if len({c for c, _ in found}) == 1}

    def resolve(self, name: str | None, code: Code | None = None) -> Resolved | None:
        """The channel a segment is, or None when it is none of this model's structures (or background)."""
        if name is not None and name_key(name) == BACKGROUND:
            return None
        if name:
            keys = equivalent_keys(name)
            if keys[0] in self._keys:
                return Resolved(*self._keys[keys[0]], by="name")
            for key in keys:
                hit = self._keys.get(key) or self._synonyms.get(key)
                if hit:
                    return Resolved(*hit, by="synonym")
        for candidate in (tuple(code) if code else None, name_code(name) if name else None):
            if candidate and candidate in self._codes:
                return Resolved(*self._codes[candidate], by="snomed")
        return None

    def channel(self, name: str | None, code: Code | None = None) -> int | None:
        found = self.resolve(name, code)
        return found.channel if found else None

    def mapping(self, segments: Iterable[Any]) -> dict[str, dict[str, Any] | None]:
        """Segment name -> {structure, channel, by} or None, for segments with ``name`` and ``code``."""
        answers = {}
        for segment in segments:
            found = self.resolve(segment.name, segment.code)
            answers[segment.name] = found.answer() if found else None
        return answers
