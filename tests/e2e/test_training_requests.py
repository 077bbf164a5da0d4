"""Training requests through a real server and the 3D Slicer module's own client: parameters of the wrong
type or unknown ones are refused before a training process starts, safe conversions reach the process, and
a study that fails in training is skipped and named in the train stats while the run goes on."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import CT, SEG, slicer_client_class, wait_for_training

pytestmark = pytest.mark.e2e

SPLEEN = 1  # in the TotalSegmentator v2 label of the shared CT
PIECE = (slice(0, 64), slice(10, 74), slice(10, 22))  # 64 x 64 x 12 voxels (3 mm) holding the spleen


def test_params_checked_and_a_failing_study_skipped(start_server, tmp_path):
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    image = nib.load(CT).slicer[PIECE]
    nib.save(image, studies / "ct.nii.gz")
    # A label already on disk, on another grid (0.8 x 0.8 x 5 mm, same shape): before labels were checked
    # when saved, one such study ended every run ERROR.
    nib.save(image, studies / "ct_other_grid.nii.gz")
    spleen = (np.asarray(nib.load(SEG).slicer[PIECE].dataobj) == SPLEEN).astype(np.uint8)
    nib.save(nib.Nifti1Image(spleen, np.diag([0.8, 0.8, 5.0, 1.0])), studies / "labels" / "final" / "ct_other_grid.nii.gz")

    server = start_server({"models": "spleen"}, studies=studies)
    client = slicer_client_class()(server.url, tmpdir=str(tmp_path))
    label_file = tmp_path / "spleen.nii.gz"
    nib.save(nib.Nifti1Image(spleen, image.affine), label_file)
    client.save_label("ct", str(label_file), params={"label_info": [{"name": "spleen", "idx": 1}]})

    for params, words in [
        ({"max_epochs": "one"}, ["'max_epochs'", "integer"]),
        ({"val_split": [0.2]}, ["'val_split'", "number"]),
        ({"max_epoch": 1}, ["unknown training parameter", "max_epoch"]),
        ({"val_ds": "/etc/datalist.json"}, ["unknown training parameter", "val_ds"]),
        ({"name": "../../elsewhere"}, ["'name'"]),
        ({"model": "wholebody"}, ["'model'", "spleen"]),
    ]:
        r = requests.post(f"{server.url}/train/spleen", json=params, timeout=30)
        assert r.status_code == 422 and all(w in r.json()["detail"] for w in words), (params, r.status_code, r.text)
    r = requests.post(f"{server.url}/train/", json={"spleen": {"max_epochs": "one"}}, timeout=30)
    assert r.status_code == 422 and "'max_epochs'" in r.json()["detail"], r.text
    assert requests.get(f"{server.url}/train/", timeout=30).status_code == 404, "a refused request started a training process"

    # Text where numbers are expected, as a hand-written request sends them: converted, and the process gets the numbers.
    client.train_start("spleen", {"max_epochs": "1", "val_split": "0", "dataset": ["Dataset"]})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    assert status["request"]["max_epochs"] == 1 and status["request"]["val_split"] == 0.0, status["request"]
    assert status["request"]["dataset"] == "Dataset"

    stats = client.info()["train_stats"]["spleen"]
    assert stats["epoch"] == 1 and "spleen" in stats["eval"]["metrics"]["val_dice_per_class"], stats
    assert [s["image"] for s in stats["skipped"]] == ["ct_other_grid"], stats["skipped"]
    reason = stats["skipped"][0]["reason"]
    assert "does not lie on its image's voxel grid" in reason and "spacing (0.8, 0.8, 5.0) mm" in reason, reason
    assert client.info()["models"]["spleen"]["weights"]["default"]["untrained"] is False
