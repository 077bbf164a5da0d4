"""``python -m lib.batch`` on a local Ray with 2 CPUs, lowres with a random-initialised checkpoint in the
official layout: three crops of the shared CT and a corrupt file, and the shared series in Orthanc with
``--to-pacs``. The labels are ``/infer``'s voxel for voxel (the infer task run in-process, same torch
thread count as the network actor), a failed study is recorded with its reason without stopping the
run, and a rerun computes nothing."""

from __future__ import annotations

import json
import os

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas
import pytest
import torch

from conftest import APP, CT, PACS_SERIES, dciodvfy_errors, retrieve_instances, retrieve_segs, series_uids

pytestmark = pytest.mark.e2e

CROPS = {  # 3 mm voxels of the shared CT: one 96^3 window at 3 mm each
    "upper_left": (slice(20, 84), slice(20, 84), slice(None)),
    "lower_right": (slice(50, 114), slice(30, 94), slice(None)),
    "centre_short": (slice(30, 94), slice(20, 84), slice(5, 25)),
}
THREADS = 2  # torch threads of the network actor and of the reference /infer: summation order, hence labels


@pytest.fixture
def ray_shutdown():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def studies(tmp_path):
    folder = tmp_path / "studies"
    folder.mkdir()
    image = nib.load(str(CT))
    for name, crop in CROPS.items():
        nib.save(image.slicer[crop], str(folder / f"{name}.nii.gz"))
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip, not a CT")
    return folder


@pytest.fixture
def model_dir(tmp_path):
    from lib.networks import wholebody_segresnet

    official = tmp_path / "model" / "wholeBody_ct_segmentation" / "models" / "model_lowres.pt"
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(wholebody_segresnet().state_dict(), official)
    return tmp_path / "model"


def infer_reference(model_dir, path: str) -> nib.Nifti1Image:
    """``/infer/wholebody`` with ``highres: false`` as the server runs it (the infer task, in-process)."""
    from lib.configs.wholebody import WholeBodySegmentation

    config = WholeBodySegmentation()
    config.init("wholebody", str(model_dir), {"download_weights": "false"}, None)
    result, answer = config.infer()({"image": path, "highres": False, "device": "cpu", "result_extension": ".nii.gz"})
    return nib.load(result)


def batch(studies, out, model_dir, capsys) -> tuple[int, list[str]]:
    from lib.batch.__main__ import main

    code = main([
        "--studies", str(studies), "--out", str(out), "--lowres", "--model-dir", str(model_dir),
        "--cpus", "2", "--object-store-mb", "500", "--actor-threads", str(THREADS),
    ])
    return code, capsys.readouterr().err.splitlines()


def test_batch_on_ray_matches_infer_records_the_failure_and_resumes(studies, model_dir, tmp_path, capsys, monkeypatch, ray_shutdown):
    # Ray's memory monitor would kill workers for memory that other jobs on this shared machine hold.
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    monkeypatch.chdir(APP)
    out = tmp_path / "out"

    code, lines = batch(studies, out, model_dir, capsys)
    assert code == 1, "a study failed: exit status 1"
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 4 and all("/min" in line for line in progress), lines
    assert progress[-1].startswith("[4/4]") and "done 3, failed 1" in progress[-1]

    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_study = {r["study"]: r for r in records if "study" in r}
    assert sorted(by_study) == sorted([*CROPS, "corrupt"])
    failed = by_study["corrupt"]
    assert failed["status"] == "failed" and failed["reason"].startswith("preprocess: ImageFileError") and "corrupt.nii.gz" in failed["reason"], failed
    assert failed["retry"] is False

    torch.set_num_threads(THREADS)
    for name in CROPS:
        record = by_study[name]
        assert record["status"] == "done" and set(record["seconds"]) == {"preprocess", "network", "write"}, record
        ours = nib.load(str(out / record["label"]))
        reference = infer_reference(model_dir, str(studies / f"{name}.nii.gz"))
        labels, expected = np.asarray(ours.dataobj), np.asarray(reference.dataobj)
        assert labels.dtype == expected.dtype == np.uint8
        assert labels.shape == expected.shape == nib.load(str(studies / f"{name}.nii.gz")).shape
        assert len(np.unique(expected)) > 10, "random weights must give a varied label map"
        assert np.array_equal(labels, expected), f"{name}: {(labels != expected).sum()} voxels differ from /infer"
        np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-5)

    # The cohort table next to the manifest: one row per study and structure present, as /infer measures them.
    table = pandas.read_csv(out / "measurements.csv")
    assert sorted(table["study"].unique()) == sorted(CROPS)
    for name in CROPS:
        rows = table[table["study"] == name].set_index("label")
        labels = np.asarray(nib.load(str(out / by_study[name]["label"])).dataobj)
        hu = np.asarray(nib.load(str(studies / f"{name}.nii.gz")).dataobj)
        present = sorted(set(np.unique(labels).tolist()) - {0})
        assert rows.index.tolist() == present
        for value in present[:5]:
            mask = labels == value
            assert rows.loc[value, "voxels"] == mask.sum() and rows.loc[value, "hu_mean"] == pytest.approx(hu[mask].mean())
            assert rows.loc[value, "volume_ml"] == pytest.approx(mask.sum() * 0.027)
    table_written = os.stat(out / "measurements.csv").st_mtime_ns

    written = {name: os.stat(out / by_study[name]["label"]).st_mtime_ns for name in CROPS}
    code, lines = batch(studies, out, model_dir, capsys)
    assert code == 0
    summary = json.loads(next(line for line in lines if line.startswith("finished: "))[len("finished: "):])
    assert (summary["done"], summary["failed"], summary["skipped"], summary["stage_seconds"]) == (0, 0, 4, {})
    assert {name: os.stat(out / by_study[name]["label"]).st_mtime_ns for name in CROPS} == written
    rerun = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()][len(records):]
    assert [list(r) for r in rerun] == [["run"]] and rerun[0]["run"]["todo"] == 0
    # The rerun rebuilt the table from the same studies' rows.
    assert os.stat(out / "measurements.csv").st_mtime_ns > table_written
    assert pandas.read_csv(out / "measurements.csv").equals(table)


def test_batch_on_ray_from_a_pacs_stores_segs_back(orthanc, pacs_tools, model_dir, tmp_path, capsys, monkeypatch, ray_shutdown):
    """DICOMweb studies: fetched by the server's datastore code, labelled as ``/infer`` labels the
    fetched series, and stored back as an AUTOMATIC SEG that the server never trains on."""
    from lib.batch.__main__ import main
    from lib.pacs.seg_tags import is_training_label

    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    monkeypatch.chdir(APP)
    stored = pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    (series_uid,) = next(iter(stored.values()))
    login = tmp_path / "pacs-login"
    login.write_text(":".join(orthanc.auth) + "\n")
    login.chmod(0o600)
    out = tmp_path / "out"
    argv = [
        "--studies", orthanc.dicomweb_url, "--credentials", str(login), "--out", str(out), "--to-pacs", "--rtstruct", "--lowres",
        "--model-dir", str(model_dir), "--cpus", "2", "--object-store-mb", "500", "--actor-threads", str(THREADS),
    ]

    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if '"study"' in line]
    assert record["study"] == series_uid and record["status"] == "done", record
    assert set(record["seconds"]) == {"fetch", "preprocess", "network", "write", "pacs"}

    (seg,) = retrieve_segs(orthanc)
    assert str(seg.SeriesInstanceUID) == record["pacs"]["seg"] and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.ContentLabel == "ORIGINAL" and not is_training_label(seg)
    assert len(seg.SegmentSequence) == record["pacs"]["segments"] > 5
    # Beside it, its measurement report and (--rtstruct) its RT Structure Set, both valid.
    (sr,) = retrieve_instances(orthanc, "SR")
    (rt,) = retrieve_instances(orthanc, "RTSTRUCT")
    assert (str(sr.SeriesInstanceUID), str(rt.SeriesInstanceUID)) == (record["pacs"]["measurement_report"], record["pacs"]["rtstruct"])
    for name, dataset in (("sr", sr), ("rtstruct", rt)):
        dataset.save_as(str(tmp_path / f"{name}.dcm"))
        assert dciodvfy_errors(tmp_path / f"{name}.dcm") == [], name
    assert len(rt.StructureSetROISequence) == len(seg.SegmentSequence)
    assert len(hd.sr.srread(str(tmp_path / "sr.dcm")).content.get_volumetric_roi_measurement_groups()) == len(seg.SegmentSequence)

    torch.set_num_threads(THREADS)
    fetched = next((out / "dicomweb").glob(f"{series_uid}.nii*"))
    labels = np.asarray(nib.load(str(out / record["label"])).dataobj)
    assert np.array_equal(labels, np.asarray(infer_reference(model_dir, str(fetched)).dataobj))

    assert main(argv) == 0
    assert [len(series_uids(orthanc, Modality=m)) for m in ("SEG", "SR", "RTSTRUCT")] == [1, 1, 1], "a rerun stores nothing again"
