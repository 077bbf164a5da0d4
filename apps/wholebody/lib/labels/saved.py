"""Which structure each value of a saved label is, as the client that saved it named them."""

from __future__ import annotations


def saved_label_names(info: dict) -> dict[str, int]:
    """Segment name -> value of a saved label: Slicer sends ``label_info`` [{name, idx}], labels
    saved from an infer result carry the model's ``label_names``."""
    names = {}
    for segment in info.get("label_info") or info.get("params", {}).get("label_info") or []:
        value = segment.get("idx", segment.get("id"))
        if segment.get("name") and value is not None:
            names[segment["name"]] = int(value)
    if not names:
        names = dict(info.get("params", {}).get("label_names") or info.get("label_names") or {})
    return names
