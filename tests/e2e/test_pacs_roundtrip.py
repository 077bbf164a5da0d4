"""Hospital set-up against a real DICOMweb PACS (Orthanc): studies come from it, labels go back as
DICOM SEG, credentials come from the environment, and a PACS that goes down loses nothing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk

from conftest import (
    PACS_SERIES,
    ROOT,
    SHARED,
    correction_record,
    dciodvfy_errors,
    free_port,
    retrieve_instances,
    retrieve_segs,
    series_uids,
    start_on_pacs,
    wait_for,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 600
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


# ----------------------------------------------------------------------------- helpers (more in conftest.py)


def infer(server, model: str, image: str, params: dict | None = None) -> tuple[bytes, dict]:
    """POST /infer/{model}: the label file (NIfTI bytes) and the JSON answer."""
    r = requests.post(
        f"{server.url}/infer/{model}",
        params={"image": image, "output": "all"},
        files={"params": (None, json.dumps(params or {}))},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, f"{model}: {r.status_code} {r.text[:1000]}"
    from requests_toolbelt.multipart import decoder

    label, answer = b"", {}
    for part in decoder.MultipartDecoder(r.content, r.headers["content-type"]).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            answer = json.loads(part.content)
        else:
            label = part.content
    assert label, f"{model}: no label in the answer"
    return label, answer


def read_label(data: bytes, path) -> sitk.Image:
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


def save_label(server, image: str, path, params: dict) -> requests.Response:
    with open(path, "rb") as f:
        return requests.put(
            f"{server.url}/datastore/label",
            params={"image": image, "tag": "final"},
            files={"label": (path.name, f), "params": (None, json.dumps(params))},
            timeout=TIMEOUT,
        )


def seg_on_label_grid(seg: pydicom.Dataset, label: sitk.Image, label_names: dict[str, int]) -> np.ndarray:
    """The SEG read by pydicom-seg (its own geometry, from the SEG's frame positions), resampled on
    the label's grid, with segment numbers mapped back to label values through the segment names."""
    import pydicom_seg

    result = pydicom_seg.MultiClassReader().read(seg)
    on_grid = sitk.Resample(result.image, label, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    numbers = sitk.GetArrayFromImage(on_grid).astype(np.int64)
    lut = np.zeros(max(256, numbers.max() + 1), dtype=np.int64)
    for item in seg.SegmentSequence:
        lut[int(item.SegmentNumber)] = label_names[str(item.SegmentLabel)]
    return lut[numbers]


# ----------------------------------------------------------------------------- tests


def test_series_without_uids_is_refused_with_a_clear_error(orthanc, pacs_tools):
    anonymised = SHARED / "ct" / "example_ct_dicom"
    with pytest.raises(pacs_tools.MissingUidError) as refused:
        pacs_tools.upload([anonymised], orthanc.dicomweb_url, orthanc.auth)
    message = str(refused.value)
    assert "20 of 20 file(s)" in message and "SOPInstanceUID" in message and "example_ct_dicom_pacs" in message
    assert series_uids(orthanc) == [], "nothing reaches the PACS"

    # The README's command says the same and exits non-zero.
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pacs.py"), "upload", str(anonymised), "--url", orthanc.dicomweb_url],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "MONAI_LABEL_DICOMWEB_USERNAME": orthanc.auth[0], "MONAI_LABEL_DICOMWEB_PASSWORD": orthanc.auth[1]},
    )
    assert run.returncode == 2 and "cannot be stored in a PACS" in run.stderr, run.stderr

    stored = pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    assert sum(len(s) for s in stored.values()) == 1


def test_orthanc_roundtrip_infer_save_seg_and_pacs_outage(orthanc, pacs_tools, start_server, monkeypatch, tmp_path):
    timings = {}
    stored = pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    (study_uid, (series_uid,)), = ((k, tuple(v)) for k, v in stored.items())

    t = time.time()
    server = start_on_pacs(start_server, orthanc, monkeypatch, tmp_path, dicomweb_rtstruct="true")
    timings["start"] = time.time() - t
    log = server.log.read_text()
    assert "dcmqi" not in log.lower(), "stock MONAI Label downloads dcmqi at start-up; this app never does"
    assert "PACS at" in log and "answers" in log

    # The series is a study of the datastore.
    stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["total"] == 1 and stats["completed"] == 0 and stats["pacs"]["reachable"] is True, stats
    listing = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()
    assert series_uid in listing["objects"], listing

    # wholebody and spleen infer on it (fetched once, JPEG 2000 as stored, converted to NIfTI).
    t = time.time()
    wholebody, answer = infer(server, "wholebody", series_uid, {"highres": False})
    timings["infer wholebody"] = time.time() - t
    label_path = tmp_path / "wholebody.nii.gz"
    label = read_label(wholebody, label_path)
    assert label.GetSize() == (512, 512, 20)
    values = np.unique(sitk.GetArrayViewFromImage(label))
    names = answer["label_names"]
    assert len(values) > 5, f"random weights still give many labels, got {values}"
    t = time.time()
    spleen, spleen_answer = infer(server, "spleen", series_uid)
    timings["infer spleen"] = time.time() - t
    assert read_label(spleen, tmp_path / "spleen.nii.gz").GetSize() == (512, 512, 20)
    assert "spleen" in spleen_answer["label_names"]

    # Save: the label goes to the PACS as DICOM SEG.
    t = time.time()
    r = save_label(server, series_uid, label_path, {"label_names": names, "model": "wholebody"})
    timings["save (SEG + STOW)"] = time.time() - t
    assert r.status_code == 200, r.text
    # "pending" is also a right answer while a background process (scoring, training) holds the upload
    # lock: the queued SEG must then reach the PACS shortly.
    assert r.json()["pacs"]["status"] in ("stored", "pending"), r.json()
    assert wait_for(lambda: len(series_uids(orthanc, Modality="SEG")) == 1, timeout=60), "SEG never reached the PACS"
    (seg,) = retrieve_segs(orthanc)

    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == study_uid and seg.PatientID == "TS-EXAMPLE"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    by_value = {v: k for k, v in names.items()}
    present = [int(v) for v in values if v]
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == [by_value[v] for v in present]
    codes = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    from lib.labels.snomed import segment_codes

    coded = 0
    for name, item in codes.items():
        expected = segment_codes(name)
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == expected.type[0], name
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == expected.category[0], name
        if expected.modifier:
            assert item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == expected.modifier[0], name
        coded += not expected.generic
    assert coded >= len(codes) - 2, "standard codes for the structures that have one"
    if "spleen" in codes:
        assert codes["spleen"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"

    # Its frames, read by pydicom-seg and by highdicom, are the label map voxel for voxel.
    assert np.array_equal(seg_on_label_grid(seg, label, names), sitk.GetArrayFromImage(label).astype(np.int64))
    import highdicom as hd

    buffer = io.BytesIO()
    seg.save_as(buffer)
    buffer.seek(0)
    read_back = hd.seg.segread(buffer)
    assert read_back.number_of_segments == len(present)
    assert {uid for _, series, uid in read_back.get_source_image_uids() if series == series_uid}

    # Beside the SEG, its measurement report (SR, TID 1500): valid, each segment's volume and mean HU.
    assert wait_for(lambda: len(series_uids(orthanc, Modality="SR")) == 1, timeout=60), "SR never reached the PACS"
    (sr,) = retrieve_instances(orthanc, "SR")
    sr.save_as(str(tmp_path / "sr.dcm"))
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert sr.StudyInstanceUID == study_uid and sr.Modality == "SR"
    groups = hd.sr.srread(str(tmp_path / "sr.dcm")).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(present)
    labelled = sitk.GetArrayFromImage(label)
    hu = sitk.GetArrayFromImage(sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(PACS_SERIES))))
    for group in groups:
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = group.referenced_segment.referenced_segment_numbers
        mask = labelled == present[number - 1]
        volume, attenuation = group.get_measurements()
        assert volume.value == pytest.approx(mask.sum() * np.prod(label.GetSpacing()) / 1000, rel=1e-6)
        assert attenuation.value == pytest.approx(hu[mask].mean(), abs=1e-3)

    # On request (--conf dicomweb_rtstruct true), an RT Structure Set too: valid, one ROI per segment.
    assert wait_for(lambda: len(series_uids(orthanc, Modality="RTSTRUCT")) == 1, timeout=60), "RTSTRUCT never reached the PACS"
    (rt,) = retrieve_instances(orthanc, "RTSTRUCT")
    rt.save_as(str(tmp_path / "rtstruct.dcm"))
    assert dciodvfy_errors(tmp_path / "rtstruct.dcm") == []
    assert rt.StudyInstanceUID == study_uid and [str(r.ROIName) for r in rt.StructureSetROISequence] == [by_value[v] for v in present]

    stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["completed"] == 1, stats

    # The PACS goes down: a request that needs it says so (503), a saved label is kept ...
    orthanc.stop()
    other = requests.post(
        f"{server.url}/infer/wholebody", params={"image": "1.2.3.4"}, files={"params": (None, "{}")}, timeout=60
    )
    assert other.status_code == 503 and "unreachable" in other.json()["detail"], other.text
    edited = sitk.GetArrayFromImage(label)
    edited[:, :, :256] = 0  # the annotator erased half
    edited_image = sitk.GetImageFromArray(edited)
    edited_image.CopyInformation(label)
    edited_path = tmp_path / "edited.nii.gz"
    sitk.WriteImage(edited_image, str(edited_path))
    r = save_label(server, series_uid, edited_path, {"label_names": names, "model": "wholebody"})
    assert r.status_code == 200, r.text
    assert r.json()["pacs"]["status"] == "pending" and "kept on this server" in r.json()["pacs"]["detail"], r.json()
    stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    # The SEG, its SR and its RTSTRUCT wait.
    assert stats["pacs"]["reachable"] is False and stats["pacs"]["pending_uploads"] == 3, stats
    # The record of this correction is the one a Slicer save gets: against the wholebody prediction served
    # (the save names the model; spleen answered later), each structure's voxels in the erased half removed.
    served = sitk.GetArrayFromImage(label)
    removed = {by_value[v]: int((served[:, :, :256] == v).sum()) for v in present}
    record = correction_record(server.url, series_uid)
    assert record["model"] == "wholebody" and record["edited"] == sorted(n for n, k in removed.items() if k)
    assert record["accepted"] == sorted(n for n, k in removed.items() if not k)
    assert {n: (e["removed"], e["added"]) for n, e in record["structures"].items()} == {n: (k, 0) for n, k in removed.items()}

    # ... and reaches the PACS when it is back (same storage, same port).
    orthanc.start()
    t = time.time()
    assert wait_for(lambda: len(series_uids(orthanc, Modality="SEG")) == 2, timeout=60), "pending SEG not uploaded"
    timings["upload after outage"] = time.time() - t
    info = requests.get(
        f"{server.url}/datastore/label/info", params={"label": series_uid, "tag": "final"}, timeout=60
    ).json()
    assert info["pacs"] == "stored", info
    newest = [s for s in retrieve_segs(orthanc) if s.SeriesInstanceUID == info["SeriesInstanceUID"]]
    assert len(newest) == 1 and np.array_equal(seg_on_label_grid(newest[0], edited_image, names), edited.astype(np.int64))

    # Another workstation (a fresh cache) trains on what the PACS holds: the newest SEG.
    from lib.pacs.connection import make_client
    from lib.pacs.datastore import PacsDatastore

    other = PacsDatastore(
        make_client(orthanc.dicomweb_url, orthanc.auth, 60, {}), {"Modality": "CT"}, str(tmp_path / "other-cache"),
        retry_s=3600,
    )
    try:
        t = time.time()
        (pair,) = other.datalist()
        timings["datalist on a fresh cache"] = time.time() - t
        imported = sitk.ReadImage(pair["label"])
        segments = other.get_label_info(series_uid, "final")["label_info"]
        lut = np.zeros(256, dtype=np.int64)
        for segment in segments:
            lut[segment["idx"]] = names[segment["name"]]
        assert np.array_equal(lut[sitk.GetArrayFromImage(imported)], edited.astype(np.int64))
    finally:
        other.close()

    # A correction named as Slicer names segments, values that are not the model's channels: the SEG carries
    # the names and codes, and wholebody would train exactly those structures (test_slicer_session trains on
    # such names, test_ohif_session on a label the PACS holds).
    slicer = np.zeros_like(edited)
    slicer[5:15, 150:300, 150:300] = 7
    slicer[5:15, 320:400, 320:400] = 9
    slicer_image = sitk.GetImageFromArray(slicer)
    slicer_image.CopyInformation(label)
    slicer_path = tmp_path / "slicer.nii.gz"
    sitk.WriteImage(slicer_image, str(slicer_path))
    label_info = [{"name": "Liver", "idx": 7}, {"name": "Left Kidney", "idx": 9}]
    r = save_label(server, series_uid, slicer_path, {"label_info": label_info})
    assert r.status_code == 200, r.text
    trains = {s["name"]: s["models"]["wholebody"]["structure"] for s in r.json()["segments"]}
    assert trains == {"Liver": "liver", "Left Kidney": "kidney_left"}, r.json()
    assert wait_for(lambda: len(series_uids(orthanc, Modality="SEG")) == 3, timeout=60), "SEG never reached the PACS"
    info = requests.get(f"{server.url}/datastore/label/info", params={"label": series_uid, "tag": "final"}, timeout=60).json()
    (named,) = [s for s in retrieve_segs(orthanc) if s.SeriesInstanceUID == info["SeriesInstanceUID"]]
    segments = {str(s.SegmentLabel): s for s in named.SegmentSequence}
    assert segments["Liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    kidney = segments["Left Kidney"]
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"

    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})


def test_pacs_down_at_start_then_back(pacs_tools, start_server, monkeypatch, tmp_path):
    """The server starts against a PACS that is down, says so, answers 503, and serves the studies
    as soon as the PACS answers; wrong credentials stop the start with a message naming them."""
    port = free_port()
    orthanc = pacs_tools.Orthanc(tmp_path / "late-orthanc", port=port, user="radiology", password="late-but-fine")
    server = start_on_pacs(start_server, orthanc, monkeypatch, tmp_path, dicomweb_refresh_s="0")
    assert "is unreachable" in server.log.read_text()
    stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["pacs"]["reachable"] is False and "unreachable" in stats["pacs"]["error"], stats
    r = requests.post(f"{server.url}/infer/wholebody", params={"image": "1.2.3"}, files={"params": (None, "{}")}, timeout=60)
    assert r.status_code == 503 and f"127.0.0.1:{port}" in r.json()["detail"], r.text
    ohif = requests.get(f"{server.url}/proxy/dicom/qido/studies", timeout=60)
    assert ohif.status_code == 503 and "unreachable" in ohif.json()["detail"], ohif.text

    try:
        orthanc.start()
        pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
        stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
        assert stats["total"] == 1 and stats["pacs"]["reachable"] is True, stats
        assert requests.get(f"{server.url}/proxy/dicom/qido/studies", timeout=60).status_code == 200

        monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", "wrong")
        with pytest.raises(RuntimeError, match="refused the credentials"):
            start_server(conf={"models": "spleen"}, studies=orthanc.dicomweb_url)
    finally:
        orthanc.stop()


def test_vista3d_on_the_pacs_series(orthanc, pacs_tools, start_server, monkeypatch, tmp_path):
    """When the app serves VISTA3D: a click on the PACS series segments it (one 128^3 window), and
    the result goes back as SEG under VISTA3D's class name and code."""
    stored = pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    series_uid = next(iter(next(iter(stored.values()))))
    import torch
    from monai.networks.nets import vista3d132

    official = tmp_path / "model" / "vista3d" / "models" / "model.pt"  # seeded random weights, official layout
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    network = vista3d132(in_channels=1)
    # Random weights may segment nothing; these surely segment around the click (so the SEG check
    # always runs): the point head's mask is hyper_in . upscaled embedding, both made constant 1.
    with torch.no_grad():
        for layer in (network.point_head.output_upscaling[-1], network.point_head.output_hypernetworks_mlps.layers[-1]):
            layer.weight.zero_()
            layer.bias.fill_(1.0)
    torch.save(network.state_dict(), official)
    server = start_on_pacs(start_server, orthanc, monkeypatch, tmp_path, models="vista3d", skip_trainers="true")

    click = {"foreground": [[180, 250, 10]], "label": "liver"}  # voxel (i, j, k) in the liver
    data, answer = infer(server, "vista3d_point", series_uid, click)
    label_path = tmp_path / "vista3d.nii.gz"
    label = read_label(data, label_path)
    assert label.GetSize() == (512, 512, 20) and "liver" in answer["label_names"], answer
    assert np.count_nonzero(sitk.GetArrayViewFromImage(label)), "the seeded weights segment around the click"
    r = save_label(server, series_uid, label_path, {"label_names": answer["label_names"], "model": "vista3d"})
    assert r.status_code == 200 and r.json()["pacs"]["status"] == "stored", r.text
    (seg,) = retrieve_segs(orthanc)
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "liver"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
