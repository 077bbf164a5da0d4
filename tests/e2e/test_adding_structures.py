"""Adding a structure without forgetting the 104, through the 3D Slicer module's own client:
save a label with a new segment, train a decoder head, and the 104-class output stays exactly
as it was while the new name is served; heads are listed and removed over REST."""

from __future__ import annotations

import hashlib

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
import torch

from conftest import CT, slicer_client_class, wait_for_training
from lib.networks import wholebody_segresnet

pytestmark = pytest.mark.e2e

SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}
LOWRES = "wholeBody_ct_segmentation/models/model_lowres.pt"


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def ct_study(tmp_path):
    """The shared CT cut to 96x96x30 at 3 mm: one window of the lowres model, so the five inferences stay short."""
    studies = tmp_path / "studies"
    studies.mkdir()
    nib.save(nib.load(str(CT)).slicer[13:109, 3:99, :], str(studies / "ct.nii.gz"))
    return studies


def test_new_structure_as_a_head_leaves_the_104_identical(start_server, ct_study, tmp_path):
    model_dir = tmp_path / "model"
    official = model_dir / LOWRES
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(wholebody_segresnet().state_dict(), official)  # seeded random weights, official layout
    official_md5 = md5(official)

    server = start_server({"models": "wholebody", "highres": "false"}, studies=ct_study, model_dir=model_dir)
    client = slicer_client_class()(server.url, tmpdir=str(tmp_path))
    assert "wholebody_structures" in client.info()["trainers"]

    before_file, before_params = client.infer("wholebody", "ct", SLICER)
    before, header = nrrd.read(before_file)
    assert "lesion" not in before_params["label_names"]

    # The annotator paints a lesion (a structure the 104 lack) and corrects the liver.
    painted = np.zeros_like(before)
    painted[30:70, 30:70, 5:25] = 5
    painted[40:55, 40:55, 10:20] = 1
    label_file = tmp_path / "painted.nrrd"
    nrrd.write(str(label_file), painted, header)
    client.save_label("ct", str(label_file), params={"label_info": [{"name": "lesion", "idx": 1}, {"name": "liver", "idx": 5}]})

    # Requests that cannot be trained are refused before a training process starts.
    for params, message in [
        ({"structures": ["tumour"]}, "no saved label has a segment named ['tumour']"),
        ({"structures": ["liver"]}, "structures of the 104-class model"),
        ({"head": "../x"}, "invalid head name"),
    ]:
        r = requests.post(f"{server.url}/train/wholebody_structures", json=params, timeout=30)
        assert r.status_code == 422 and message in r.json()["detail"], (params, r.status_code, r.text)

    client.train_start("wholebody_structures", {"max_epochs": 1, "val_split": 0.0})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    assert md5(official) == official_md5, "training a head changed the 104-class checkpoint"

    info = client.info()["models"]["wholebody"]
    assert info["labels"]["lesion"] == 105 and info["labels"]["liver"] == 5
    heads = requests.get(f"{server.url}/heads/wholebody", timeout=30).json()
    assert [(h["name"], h["structures"], h["resolution"], h["stale"]) for h in heads] == [
        ("lesion", {"lesion": 105}, "lowres", False)
    ]

    plain_file, plain_params = client.infer("wholebody", "ct", {**SLICER, "heads": False})
    assert np.array_equal(nrrd.read(plain_file)[0], before), "the 104-class output changed"
    assert "lesion" not in plain_params["label_names"]

    # One epoch teaches a random-weight head little; to see where the merge puts a structure, the
    # published head is made to claim every voxel (the server reloads it by mtime).
    head_file = model_dir / "wholebody_heads" / "lowres" / "lesion.pt"
    head = torch.load(head_file, weights_only=True)
    head["conv_final.2.conv.bias"] = torch.tensor([0.0, 1e4])
    torch.save(head, head_file)

    kept_file, kept_params = client.infer("wholebody", "ct", {**SLICER, "head_overlap": "existing"})
    kept = nrrd.read(kept_file)[0]
    assert kept_params["label_names"]["lesion"] == 105 and kept_params["heads"] == ["lesion"]
    assert np.array_equal(kept[before > 0], before[before > 0]), "a voxel of the 104 was overwritten"
    assert (kept[before == 0] == 105).all() and (before == 0).any()

    new_file, _ = client.infer("wholebody", "ct", {**SLICER, "head_overlap": "new"})
    assert (nrrd.read(new_file)[0] == 105).all()

    r = requests.delete(f"{server.url}/heads/wholebody/lesion", timeout=30)
    assert r.status_code == 200 and r.json()["removed"][0]["name"] == "lesion"
    assert "lesion" not in client.info()["models"]["wholebody"]["labels"]
    assert np.array_equal(nrrd.read(client.infer("wholebody", "ct", SLICER)[0])[0], before)
    r = requests.delete(f"{server.url}/heads/wholebody/lesion", timeout=30)
    assert r.status_code == 404 and "no head 'lesion'" in r.json()["detail"]
    assert requests.get(f"{server.url}/heads/spleen", timeout=30).status_code == 404
