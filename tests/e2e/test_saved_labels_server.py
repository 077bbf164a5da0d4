"""Issue 13 through a real server and the 3D Slicer module's own client: a study with a dotted id
(a DICOMweb Series Instance UID), a label named as Slicer names segments with values that are not
the model's channels; the save answer says what each segment trains (one epoch of ``wholebody`` on
such a label is in test_slicer_session.py); a label off the image's grid is refused; a label deleted
after a format change stays deleted."""

from __future__ import annotations

import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests

from conftest import CT, slicer_client_class

pytestmark = pytest.mark.e2e

DOTTED = "1.2.826.0.1.3680043.8.498.1234"
# Slicer's label_info: names as its segment list shows them, values as the annotator's file has them.
LABEL_INFO = [{"name": "Liver", "idx": 7}, {"name": "Left Kidney", "idx": 9}, {"name": "spleen", "idx": 11}, {"name": "Tumour", "idx": 13}]


def test_save_answer_geometry_and_delete_on_a_dotted_study(start_server, tmp_path):
    server = start_server({"models": "wholebody", "highres": "false"})
    client = slicer_client_class()(server.url, tmpdir=str(tmp_path))
    assert client.upload_image(str(CT), DOTTED)["image"] == DOTTED

    ct = nib.load(str(CT))
    label = np.zeros(ct.shape, np.uint8)
    label[30:60, 30:60, 5:25] = 7
    label[70:90, 30:50, 5:20] = 9
    label[30:50, 65:85, 5:20] = 11
    label[95:110, 70:90, 10:20] = 13
    label_file = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, ct.affine), str(label_file))
    answer = client.save_label(DOTTED, str(label_file), params={"label_info": LABEL_INFO})

    trains = {s["name"]: s["models"] for s in answer["segments"]}
    assert trains["Liver"]["wholebody"]["structure"] == "liver"
    assert trains["Left Kidney"]["wholebody"]["structure"] == "kidney_left"
    assert trains["spleen"]["wholebody"]["structure"] == "spleen"
    assert trains["Tumour"]["wholebody_structures"] == {"structure": "Tumour", "new": True}
    assert trains["Liver"]["wholebody_structures"] is None
    assert answer["unmapped"]["wholebody"] == ["Tumour"]
    listed = requests.get(f"{server.url}/datastore/?output=all", timeout=30).json()
    assert listed["objects"][DOTTED]["labels"]["final"]["info"]["trains"]["unmapped"] == answer["unmapped"]

    # A "new" structure that is one of the 104 is refused before any training starts.
    refused = requests.post(f"{server.url}/train/wholebody_structures", json={"structures": "left kidney"}, timeout=30)
    assert refused.status_code == 422 and "kidney_left" in refused.text, refused.text

    # A label with the image's shape on another grid (0.8 x 0.8 x 5 mm) is refused, naming both.
    moved = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(label, np.diag([0.8, 0.8, 5.0, 1.0])), str(moved))
    with open(moved, "rb") as f:
        r = requests.put(
            f"{server.url}/datastore/label", params={"image": DOTTED},
            files={"label": ("moved.nii.gz", f), "params": (None, json.dumps({"label_info": LABEL_INFO}))}, timeout=60,
        )
    assert r.status_code == 422 and "spacing (0.8, 0.8, 5.0)" in r.text and "spacing (3.0, 3.0, 3.0)" in r.text, r.text

    # Saved again as .nrrd (as Slicer writes it), then deleted: no older format comes back.
    header = {"space": "left-posterior-superior", "space directions": (np.diag([-1, -1, 1]) @ ct.affine[:3, :3]).T,
              "space origin": np.diag([-1, -1, 1]) @ ct.affine[:3, 3]}
    nrrd_file = tmp_path / "label.nrrd"
    nrrd.write(str(nrrd_file), label, header)
    client.save_label(DOTTED, str(nrrd_file), params={"label_info": LABEL_INFO})
    assert requests.delete(f"{server.url}/datastore/label", params={"id": DOTTED, "tag": "final"}, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/datastore/label", params={"label": DOTTED, "tag": "final"}, timeout=30).status_code == 404
    listed = requests.get(f"{server.url}/datastore/?output=all", timeout=30).json()
    assert "final" not in listed["objects"][DOTTED]["labels"]
