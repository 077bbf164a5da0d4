"""``POST /batch/infer/{model}`` through a real server: ``wholebody``, ``spleen`` and ``vista3d`` on a
local folder (with ``run_sync`` and in the background) and ``wholebody`` on a DICOMweb PACS (Orthanc),
labels saved under the given tag, a study that fails answered with its reason, bad requests refused."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from conftest import CT, PACS_SERIES, retrieve_segs, series_uids, start_on_pacs, wait_for

pytestmark = pytest.mark.e2e

TIMEOUT = 900
CROPS = {"a_crop": (slice(20, 84), slice(20, 84), slice(None)), "b_crop": (slice(40, 104), slice(10, 74), slice(None))}


def batch(server, model: str, params: dict, run_sync: bool = False, images: str = "all") -> requests.Response:
    return requests.post(
        f"{server.url}/batch/infer/{model}", params={"run_sync": str(run_sync).lower(), "images": images}, json=params, timeout=TIMEOUT
    )


def wait_for_batch(server, timeout: float = TIMEOUT) -> dict:
    start = time.time()
    while time.time() - start < timeout:
        status = requests.get(f"{server.url}/batch/infer", timeout=60).json()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            return status
        time.sleep(2)
    raise TimeoutError(f"batch infer still running after {timeout} s: {status}")


def saved_labels(server, tag: str) -> dict[str, dict]:
    objects = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    return {image: obj["labels"][tag] for image, obj in objects.items() if tag in obj.get("labels", {})}


def infer_nifti(server, model: str, image: str, params: dict, path) -> np.ndarray:
    r = requests.post(
        f"{server.url}/infer/{model}", params={"image": image, "output": "image"}, files={"params": (None, json.dumps(params))}, timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text
    path.write_bytes(r.content)
    return np.asarray(nib.load(str(path)).dataobj)


def infer_json(server, model: str, image: str, params: dict) -> dict:
    r = requests.post(
        f"{server.url}/infer/{model}", params={"image": image, "output": "json"}, files={"params": (None, json.dumps(params))}, timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def local_server(tmp_path, start_server):
    from monai.networks.nets import vista3d132

    from lib.networks import spleen_unet, wholebody_segresnet

    studies, model_dir = tmp_path / "studies", tmp_path / "model"
    studies.mkdir()
    image = nib.load(str(CT))
    for name, crop in CROPS.items():
        nib.save(image.slicer[crop], str(studies / f"{name}.nii.gz"))
    (studies / "z_corrupt.nii.gz").write_bytes(b"\x1f\x8b not a CT")
    for network, relative in ((wholebody_segresnet, "wholeBody_ct_segmentation/models/model_lowres.pt"), (lambda: vista3d132(in_channels=1), "vista3d/models/model.pt")):
        (model_dir / relative).parent.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(network().eval().state_dict(), model_dir / relative)
    # A spleen UNet that finds nothing: its last layer's background bias far above the spleen's.
    spleen = spleen_unet().state_dict()
    last_bias = [k for k, v in spleen.items() if k.endswith("bias") and v.shape == (2,)][-1]
    spleen[last_bias] = torch.tensor([1e4, -1e4])
    (model_dir / "spleen_ct_segmentation" / "models").mkdir(parents=True)
    torch.save(spleen, model_dir / "spleen_ct_segmentation" / "models" / "model.pt")
    return start_server(conf={"highres": "false", "skip_trainers": "true"}, studies=studies, model_dir=model_dir)


def test_batch_infer_on_a_folder(local_server, tmp_path):
    server = local_server

    # Refused before any study is read, naming the problem.
    for model, params, status, words in [
        ("nope", {}, 404, "unknown model 'nope'; available: "),
        ("vista3d_point", {}, 422, "needs clicks"),
        ("wholebody", {"max_workers": "two"}, 422, "'max_workers' must be an integer"),
        ("wholebody", {"highres": "maybe"}, 422, "'highres' must be true or false"),
        ("wholebody", {"label_tag": "../final"}, 400, "invalid label tag"),
    ]:
        r = batch(server, model, params, run_sync=True)
        assert r.status_code == status and words in r.json()["detail"], (model, params, r.status_code, r.text)
    assert batch(server, "wholebody", {}, images="some").status_code == 422

    # wholebody, run_sync, the endpoint's defaults (multi_gpu on a machine without GPU): every study
    # answered, the corrupt one with its reason, the others saved under the tag as /infer labels them.
    r = batch(server, "wholebody", {"label_tag": "batch", "multi_gpu": True, "device": "cuda"}, run_sync=True)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert sorted(answer) == ["a_crop", "b_crop", "z_corrupt"]
    assert "error" in answer["z_corrupt"] and "z_corrupt" in answer["z_corrupt"]["error"], answer["z_corrupt"]
    saved = saved_labels(server, "batch")
    assert sorted(saved) == ["a_crop", "b_crop"]
    assert all(answer[name]["label"] == name and answer[name]["tag"] == "batch" for name in CROPS), answer
    labels = np.asarray(nib.load(str(server.studies / "labels" / "batch" / "a_crop.nii.gz")).dataobj)
    expected = infer_nifti(server, "wholebody", "a_crop", {"highres": False}, tmp_path / "a_crop.nii.gz")
    assert len(np.unique(expected)) > 10 and np.array_equal(labels, expected)

    # /infer's answer measures every structure it holds, named as label_names name them; so does the batch's.
    answer_json = infer_json(server, "wholebody", "a_crop", {"highres": False})
    measured = answer_json["measurements"]
    names = {value: name for name, value in answer_json["label_names"].items()}
    hu = np.asarray(nib.load(str(server.studies / "a_crop.nii.gz")).dataobj)
    assert [m["label"] for m in measured] == sorted(set(np.unique(expected).tolist()) - {0})
    for m in measured:
        mask = expected == m["label"]
        assert m["name"] == names[m["label"]] and m["voxels"] == mask.sum(), m
        assert m["volume_ml"] == pytest.approx(mask.sum() * 27 / 1000) and m["hu_mean"] == pytest.approx(hu[mask].mean()), m
    assert answer_json["latencies"]["measurements"] < answer_json["latencies"]["total"]
    assert answer["a_crop"]["params"]["measurements"] == measured
    assert "measurements" not in infer_json(server, "wholebody", "a_crop", {"highres": False, "measurements": False})
    r = requests.post(f"{server.url}/infer/wholebody", params={"image": "a_crop", "output": "json"}, files={"params": (None, json.dumps({"measurements": "some"}))}, timeout=TIMEOUT)
    assert r.status_code == 422 and "'measurements' must be true or false" in r.json()["detail"], r.text
    # A spleen model that finds nothing: an empty list, not an error.
    spleen = infer_json(server, "spleen", "a_crop", {})
    assert spleen["measurements"] == [], spleen["measurements"][:2]

    # spleen in the background: the status ends DONE with the summary, labels under the tag.
    r = batch(server, "spleen", {"label_tag": "spleen_batch", "multi_gpu": False})
    assert r.status_code == 200 and r.json()["status"] in ("SUBMITTED", "RUNNING"), r.text
    status = wait_for_batch(server)
    assert status["status"] == "DONE", status
    assert any("2 done, 1 failed" in line for line in status["details"]), status["details"][-5:]
    assert sorted(saved_labels(server, "spleen_batch")) == ["a_crop", "b_crop"]

    # vista3d, run_sync, one study (max_batch_size) and one class prompt.
    r = batch(server, "vista3d", {"label_tag": "vista", "max_batch_size": 1, "label_prompt": [1]}, run_sync=True)
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["a_crop"] and "error" not in r.json()["a_crop"], r.json()
    assert sorted(saved_labels(server, "vista")) == ["a_crop"]


def test_batch_infer_on_a_pacs(orthanc, pacs_tools, start_server, monkeypatch, tmp_path):
    """The SEG goes back to the PACS the series came from, marked as the model's output under its tag,
    so the server never takes it for an annotator's label to train on."""
    from lib.networks import wholebody_segresnet

    stored = pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    (study_uid, (series_uid,)), = ((k, tuple(v)) for k, v in stored.items())
    official = tmp_path / "model" / "wholeBody_ct_segmentation" / "models" / "model_lowres.pt"
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(wholebody_segresnet().state_dict(), official)
    server = start_on_pacs(start_server, orthanc, monkeypatch, tmp_path, models="wholebody", skip_trainers="true")

    r = batch(server, "wholebody", {"multi_gpu": False})  # label_tag: MONAI Label's default, original
    assert r.status_code == 200, r.text
    status = wait_for_batch(server)
    assert status["status"] == "DONE" and any("1 done, 0 failed" in line for line in status["details"]), status

    assert sorted(saved_labels(server, "original")) == [series_uid]
    assert wait_for(lambda: len(series_uids(orthanc, Modality="SEG")) == 1, timeout=60), "SEG never reached the PACS"
    (seg,) = retrieve_segs(orthanc)
    assert seg.StudyInstanceUID == study_uid and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.ContentLabel == "ORIGINAL" and {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"AUTOMATIC"}
    assert len(seg.SegmentSequence) > 5, "random weights give many structures"

    stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["total"] == 1 and stats["completed"] == 0, f"a model's output is not a label to train on: {stats}"
