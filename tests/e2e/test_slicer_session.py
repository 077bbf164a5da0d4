"""A 3D Slicer user's session, driven by the Slicer module's own HTTP client."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest

from conftest import CT, slicer_client_class, wait_for_training

pytestmark = pytest.mark.e2e



def test_infer_save_train_infer(start_server, tmp_path):
    server = start_server({"models": "wholebody", "highres": "false"})
    client = slicer_client_class()(server.url, tmpdir=str(tmp_path))

    info = client.info()
    model = info["models"]["wholebody"]
    assert model["type"] == "segmentation"
    assert model["labels"]["liver"] == 5 and len(model["labels"]) == 104
    assert model["untrained"] is True

    # A dotted id, as every study from a PACS has (its Series Instance UID). The shared CT cut to 96x96x30 at
    # 3 mm: one window of the lowres model per inference.
    study = "1.2.826.0.1.3680043.8.498.1234"
    crop = tmp_path / "ct_crop.nii.gz"
    nib.save(nib.load(str(CT)).slicer[13:109, 3:99, :], str(crop))
    assert client.upload_image(str(crop), study)["image"] == study

    # What Slicer sends with every request.
    slicer_params = {"result_extension": ".nrrd", "result_dtype": "uint8"}
    result_file, params = client.infer("wholebody", study, slicer_params)
    first, header = nrrd.read(result_file)
    assert first.dtype == np.uint8 and first.shape == (96, 96, 30)
    assert params["label_names"]["spleen"] == 1
    assert np.allclose(np.diag(header["space directions"]).__abs__(), 3.0)

    # The annotator corrects the label: a box of liver where the patient's liver is, and a left
    # kidney; Slicer names the segments as its list shows them, the values are not the model's channels.
    corrected = np.zeros_like(first)
    corrected[10:60, 20:70, 5:25] = 1
    corrected[70:90, 30:50, 5:20] = 2
    label_file = tmp_path / "corrected.nrrd"
    nrrd.write(str(label_file), corrected, header)
    answer = client.save_label(study, str(label_file), params={"label_info": [{"name": "Liver", "idx": 1}, {"name": "Left Kidney", "idx": 2}]})
    assert [s["models"]["wholebody"]["structure"] for s in answer["segments"]] == ["liver", "kidney_left"], answer

    client.train_start("wholebody", {"max_epochs": 1, "highres": False, "val_split": 0.0})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    stats = client.info()["train_stats"]["wholebody"]
    assert stats["total_time"] and set(stats["eval"]["metrics"]["val_dice_per_class"]) == {"liver", "kidney_left"}, stats

    weights = client.info()["models"]["wholebody"]["weights"]["lowres"]
    assert weights["untrained"] is False and "trained here" in weights["message"]

    second, _ = nrrd.read(client.infer("wholebody", study, slicer_params)[0])
    assert second.shape == first.shape
    assert (second != first).any(), "the retrained weights were not used"
