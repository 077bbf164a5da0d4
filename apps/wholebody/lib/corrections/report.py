"""The correction report per model version: how much annotators had to change what each version served.

Read from the correction records of the saved final labels. The headline is ``accepted_share``: of the
structures a version served, the share annotators saved untouched. Medians are over studies (voxels,
slices, seconds) and, per structure, over the studies where the structure was served or saved."""

from __future__ import annotations

from statistics import median
from typing import Any, Iterable

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.corrections.record import RECORD_KEY


def records(datastore: Datastore) -> list[dict[str, Any]]:
    """Every saved final label's correction record, with its study id."""
    found = []
    for image_id in datastore.get_labeled_images():
        record = (datastore.get_label_info(image_id, DefaultLabelTag.FINAL) or {}).get(RECORD_KEY)
        if isinstance(record, dict) and "structures" in record:
            found.append({**record, "study": image_id})
    return found


def _median(values: Iterable[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return float(median(present)) if present else None


def _accepted_share(group: list[dict[str, Any]]) -> float | None:
    served = sum(1 for r in group for e in r["structures"].values() if e["served"])
    return round(len([n for r in group for n in r["accepted"]]) / served, 4) if served else None


def _summary(group: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "studies": sorted(r["study"] for r in group),
        "accepted_share": _accepted_share(group),
        "median_voxels_changed": _median(r["voxels_changed"] for r in group),
        "median_slices_touched": _median(r["slices_touched"] for r in group),
        "median_seconds": _median(r.get("seconds") for r in group),
    }


def _per_structure(group: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in group:
        for name, entry in record["structures"].items():
            by_name.setdefault(name, []).append(entry)
    return {
        name: {
            "studies": len(entries),
            "accepted": sum(1 for e in entries if e["served"] and not e["added"] and not e["removed"]),
            "missed": sum(1 for e in entries if e["final"] and not e["served"]),
            "median_voxels_changed": _median(e["added"] + e["removed"] for e in entries),
            "median_slices": _median(e["slices"] for e in entries),
            "median_dice": _median(e["dice"] for e in entries),
        }
        for name, entries in sorted(by_name.items())
    }


def report(all_records: list[dict[str, Any]]) -> dict[str, Any]:
    """model -> version -> summary, per structure and (where records name them) per annotator."""
    models: dict[str, dict[str, list]] = {}
    for record in all_records:
        models.setdefault(str(record.get("model")), {}).setdefault(str(record.get("version")), []).append(record)
    answer: dict[str, Any] = {}
    for model, versions in sorted(models.items()):
        answer[model] = {}
        for version, group in sorted(versions.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0])):
            annotators: dict[str, list] = {}
            for record in group:
                if record.get("annotator"):
                    annotators.setdefault(str(record["annotator"]), []).append(record)
            answer[model][version] = {
                **_summary(group),
                "structures": _per_structure(group),
                "annotators": {name: _summary(own) for name, own in sorted(annotators.items())},
            }
    return answer
