"""The correction report on records of two model versions and four corrected studies, values checked."""

from __future__ import annotations

from lib.corrections.report import report
from lib.corrections.report_routes import page


def _entry(served, added=0, removed=0, slices=0):
    final = served + added - removed
    return {"served": served, "final": final, "added": added, "removed": removed, "dice": 1.0 if not (added or removed) else 0.5, "slices": slices}


def _record(study, version, structures, seconds, annotator):
    changed = sum(e["added"] + e["removed"] for e in structures.values())
    return {
        "study": study,
        "model": "wholebody",
        "version": version,
        "structures": structures,
        "accepted": sorted(n for n, e in structures.items() if e["served"] and not e["added"] and not e["removed"]),
        "voxels_changed": changed,
        "slices_touched": max([e["slices"] for e in structures.values()] + [0]),
        "seconds": seconds,
        "annotator": annotator,
    }


RECORDS = [
    # version 1: 2 of 6 served structures accepted
    _record("s1", 1, {"liver": _entry(100, added=10, slices=2), "spleen": _entry(50), "kidney_left": _entry(30, removed=30, slices=3)}, 120.0, "ann"),
    _record("s2", 1, {"liver": _entry(100, added=30, slices=4), "spleen": _entry(50, removed=5, slices=1), "kidney_left": _entry(30)}, 200.0, "bob"),
    # version 2: 5 of 6 accepted
    _record("s3", 2, {"liver": _entry(100, added=4, slices=1), "spleen": _entry(50), "kidney_left": _entry(30)}, 60.0, "ann"),
    _record("s4", 2, {"liver": _entry(100), "spleen": _entry(50), "kidney_left": _entry(30), "pancreas": _entry(0, added=20, slices=2)}, 40.0, "ann"),
]


def test_report_per_version():
    answer = report(RECORDS)["wholebody"]
    assert list(answer) == ["1", "2"]
    one, two = answer["1"], answer["2"]
    assert one["studies"] == ["s1", "s2"] and two["studies"] == ["s3", "s4"]
    assert one["accepted_share"] == round(2 / 6, 4) and two["accepted_share"] == round(5 / 6, 4)
    assert one["median_voxels_changed"] == 37.5  # 40 and 35
    assert two["median_voxels_changed"] == 12.0  # 4 and 20
    assert (one["median_seconds"], two["median_seconds"]) == (160.0, 50.0)
    assert one["median_slices_touched"] == 3.5
    liver = one["structures"]["liver"]
    assert (liver["studies"], liver["accepted"], liver["median_voxels_changed"], liver["median_slices"]) == (2, 0, 20.0, 3.0)
    assert two["structures"]["pancreas"]["missed"] == 1 and two["structures"]["pancreas"]["accepted"] == 0
    assert one["annotators"]["bob"]["studies"] == ["s2"] and one["annotators"]["bob"]["accepted_share"] == round(1 / 3, 4)
    assert two["annotators"]["ann"]["median_seconds"] == 50.0 and list(two["annotators"]) == ["ann"]


def test_page_shows_each_version():
    text = page(report(RECORDS))
    assert "<h2>wholebody</h2>" in text and "83.3%" in text and "33.3%" in text
