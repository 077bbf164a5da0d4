"""Which structure each value of a saved label is, as the file or the client that saved it names them.

A label's segments are stored in its info as ``label_info``: ``[{name, idx, layer, code}]`` (``layer``
only for a layered Slicer ``.seg.nrrd``, ``code`` the SNOMED CT type and side when known). Slicer sends
``label_info`` [{name, idx}] built from the segments' positions in its list; a ``.seg.nrrd`` says
itself which value of which layer each segment is (``SegmentN_Name`` / ``_LabelValue`` / ``_Layer``
/ ``_Tags``), and the file wins: ``label_info`` only names what the file does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from lib.labels.names import Code


@dataclass(frozen=True)
class Segment:
    name: str
    value: int
    layer: int = 0
    code: Code | None = None

    def as_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "idx": self.value}
        if self.layer:
            info["layer"] = self.layer
        if self.code:
            info["code"] = list(self.code)
        return info


def _code(value: Any) -> Code | None:
    if isinstance(value, (list, tuple)) and value and value[0]:
        return str(value[0]), (str(value[1]) if len(value) > 1 and value[1] else None)
    return None


def saved_segments(info: Mapping[str, Any]) -> list[Segment]:
    """The segments of a saved label: its ``label_info``, else (a label saved from an infer result)
    the model's ``label_names``."""
    params = info.get("params") or {}
    segments = []
    for item in info.get("label_info") or params.get("label_info") or []:
        if not isinstance(item, Mapping):
            continue
        value = item.get("idx", item.get("id"))
        if item.get("name") and value is not None:
            segments.append(Segment(str(item["name"]), int(value), int(item.get("layer") or 0), _code(item.get("code"))))
    if not segments:
        names = params.get("label_names") or info.get("label_names") or {}
        segments = [Segment(str(name), int(value)) for name, value in names.items()]
    return segments


# ---------------------------------------------------------------------- a .seg.nrrd's own table
_SEGMENT_FIELD = re.compile(r"^Segment(\d+)_(\w+)$")


def _terminology_code(tags: str) -> Code | None:
    """SNOMED CT type and modifier of Slicer's ``TerminologyEntry`` tag
    (``context~SCT^cat^Meaning~SCT^type^Meaning~SCT^modifier^Meaning~...``)."""
    for tag in tags.split("|"):
        key, _, value = tag.partition(":")
        if key != "TerminologyEntry":
            continue
        parts = value.split("~")
        concept = parts[2].split("^") if len(parts) > 2 else []
        modifier = parts[3].split("^") if len(parts) > 3 else []
        if len(concept) >= 2 and concept[1]:
            return concept[1], (modifier[1] if len(modifier) >= 2 and modifier[1] else None)
    return None


def file_segments(header: Mapping[str, Any], layers: int) -> list[Segment]:
    """The segment table of a Slicer ``.seg.nrrd`` header (empty for other files). A file of Slicer
    before 4.11 has no ``LabelValue``: one binary layer per segment."""
    fields: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        match = _SEGMENT_FIELD.match(str(key))
        if match:
            fields.setdefault(int(match.group(1)), {})[match.group(2)] = str(value)
    segments = []
    for number, field in sorted(fields.items()):
        name = field.get("Name") or field.get("ID")
        if not name:
            continue
        old_style = "LabelValue" not in field
        value = int(field.get("LabelValue") or 1)
        layer = int(field.get("Layer") or (number if old_style and layers > 1 else 0))
        segments.append(Segment(name, value, layer, _terminology_code(field.get("Tags", ""))))
    return segments


def label_segments(table: list[Segment], client_info: Mapping[str, Any]) -> list[Segment]:
    """The file's segments; the client's ``label_info`` names only values the file leaves unnamed."""
    client = saved_segments(client_info)
    if not table:
        return client
    named = {(s.layer, s.value) for s in table}
    return [*table, *(s for s in client if (s.layer, s.value) not in named and s.name not in {t.name for t in table})]
