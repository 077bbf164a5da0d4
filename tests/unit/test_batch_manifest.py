"""The batch manifest decides what a rerun leaves alone; progress says how fast and how long."""

from __future__ import annotations

import os

from lib.batch.manifest import Manifest
from lib.batch.progress import Progress


def test_rerun_settles_done_and_lasting_failures_of_the_same_key_and_version(tmp_path):
    manifest = Manifest(str(tmp_path))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.nii.gz").write_bytes(b"label")
    manifest.start_run("k1", {"highres": False})
    manifest.record("a", "k1", "done", version="v", label="labels/a.nii.gz")
    manifest.record("gone", "k1", "done", version="v", label="labels/gone.nii.gz")  # label file deleted since
    manifest.record("corrupt", "k1", "failed", version="v", reason="preprocess: unreadable", retry=False)
    manifest.record("pacs_down", "k1", "failed", version="v", reason="fetch: HTTP 503", retry=True)
    manifest.record("changed", "k1", "done", version="old", label="labels/a.nii.gz")
    manifest.record("other_key", "k0", "done", version="v", label="labels/a.nii.gz")
    versions = {s: "v" for s in ("a", "gone", "corrupt", "pacs_down", "changed", "other_key")}

    assert manifest.settled("k1", versions) == {"a", "corrupt"}
    assert manifest.settled("k1", versions, retry_failed=True) == {"a"}
    assert manifest.settled("k2", versions) == set()


def test_a_done_study_needs_its_measurement_rows(tmp_path):
    manifest = Manifest(str(tmp_path))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.nii.gz").write_bytes(b"label")
    (tmp_path / "a.csv").write_text("study\n")
    manifest.record("a", "k", "done", version="v", label="labels/a.nii.gz", measurements="a.csv")
    manifest.record("b", "k", "done", version="v", label="labels/a.nii.gz", measurements="b.csv")  # rows lost
    assert sorted(manifest.done()) == ["a"]
    assert manifest.settled("k", {"a": "v", "b": "v"}) == {"a"}


def test_latest_record_wins_and_a_cut_line_is_ignored(tmp_path):
    manifest = Manifest(str(tmp_path))
    (tmp_path / "a.nii.gz").write_bytes(b"label")
    manifest.record("a", "k", "failed", version="v", reason="network: out of memory", retry=False)
    manifest.record("a", "k", "done", version="v", label="a.nii.gz")
    with open(manifest.path, "a") as f:
        f.write('{"study": "a", "status": "fail')  # a crash in the middle of a line
    assert manifest.settled("k", {"a": "v"}) == {"a"}
    assert [r["status"] for r in manifest.records()] == ["failed", "done"]
    assert os.path.getsize(manifest.path) > 0


def test_progress_line_counts_rate_and_time_left():
    now = [0.0]
    progress = Progress(total=4, skipped=2, clock=lambda: now[0])
    now[0] = 60.0
    line = progress.update("a")
    assert line.startswith("[1/4] a done") and "done 1, failed 0, skipped 2" in line and "1.00/min" in line
    assert "about 3 min left" in line
    now[0] = 120.0
    line = progress.update("b", "preprocess: not a CT")
    assert "b failed: preprocess: not a CT" in line and "done 1, failed 1" in line and "about 2 min left" in line
    progress.update("c")
    assert progress.update("d").endswith("finished")
