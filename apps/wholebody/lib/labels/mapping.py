"""What a saved label trains in each model: the answer to a label save, also kept in the label's info
(so ``/datastore`` shows it)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from lib.labels.saved import Segment

#: model -> its trainer's ``map_segments``: segments -> {segment name: {structure, ...} or None}
Mappers = Mapping[str, Callable[[list[Segment]], Mapping[str, Any]]]


def segment_mapping(segments: list[Segment], mappers: Mappers) -> dict[str, Any]:
    """``segments``: [{name, value, layer, models: {model: {structure, channel, by} | {structure, new} | None}}];
    ``unmapped``: {model: [segment names it does not train]} (kept on the server all the same)."""
    by_model = {model: mapper(segments) for model, mapper in mappers.items()}
    described = []
    for segment in segments:
        entry: dict[str, Any] = {"name": segment.name, "value": segment.value}
        if segment.layer:
            entry["layer"] = segment.layer
        entry["models"] = {model: found.get(segment.name) for model, found in by_model.items()}
        described.append(entry)
    unmapped = {model: [s.name for s in segments if not found.get(s.name)] for model, found in by_model.items()}
    return {"segments": described, "unmapped": unmapped}
