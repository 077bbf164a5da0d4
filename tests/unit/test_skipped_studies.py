"""A study that fails in training is skipped, named with its reason in the train stats, and the run goes on."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, RandCropByPosNegLabeld
from monailabel.datastore.local import LocalDatastore

from conftest import CT, SEG
from lib.configs import CONFIGS
from lib.trainers.skipped_studies import NoStudyToTrainError, SkippedStudies, SkippingDataset

SPLEEN = 1  # in the TotalSegmentator v2 label of the shared CT
PIECE = (slice(0, 64), slice(10, 74), slice(10, 22))  # 64 x 64 x 12 voxels (3 mm) holding the spleen


def test_a_failing_item_is_replaced_and_reported_once():
    crop = Compose([RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=(8,) * 3, image_key="image", image_threshold=0.0)])
    good = {"image": torch.rand(1, 16, 16, 16), "label": (torch.rand(1, 16, 16, 16) > 0.5).float(), "image_id": "good"}
    # Nothing to sample: no label, and no image voxel above the threshold.
    empty = {"image": -torch.rand(1, 16, 16, 16), "label": torch.zeros(1, 16, 16, 16), "image_id": "empty"}
    skipped = SkippedStudies()
    dataset = SkippingDataset(Dataset([good, empty], crop), [good, empty], lambda item: item["image_id"], skipped)
    assert [dataset[i][0]["image_id"] for i in (0, 1, 1, 0)] == ["good"] * 4
    assert skipped.as_stats() == [{"image": "empty", "reason": "RandCropByPosNegLabeld: ValueError: No sampling location available."}]

    nothing = SkippingDataset(Dataset([empty], crop), [empty], lambda item: item["image_id"], SkippedStudies())
    with pytest.raises(NoStudyToTrainError, match="'empty': RandCropByPosNegLabeld: ValueError: No sampling location"):
        nothing[0]


@pytest.fixture
def datastore(tmp_path) -> LocalDatastore:
    """Three studies on a crop of the shared CT: a good spleen label, one on another grid (0.8 x 0.8 x 5 mm,
    same shape: the case that used to end every run ERROR), and one that is not an image at all."""
    studies = tmp_path / "studies"
    studies.mkdir()
    image = nib.load(CT).slicer[PIECE]
    spleen = (np.asarray(nib.load(SEG).slicer[PIECE].dataobj) == SPLEEN).astype(np.uint8)
    assert spleen.sum() > 500
    for study in ("good", "other_grid", "unreadable"):
        nib.save(image, studies / f"{study}.nii.gz")
    nib.save(nib.Nifti1Image(spleen, image.affine), tmp_path / "good.nii.gz")
    nib.save(nib.Nifti1Image(spleen, np.diag([0.8, 0.8, 5.0, 1.0])), tmp_path / "other_grid.nii.gz")
    (tmp_path / "unreadable.nii.gz").write_bytes(b"not an image")
    store = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    for study in ("good", "other_grid", "unreadable"):
        store.save_label(study, str(tmp_path / f"{study}.nii.gz"), "final", {"label_info": [{"name": "spleen", "idx": 1}]})
    return store


def spleen_trainer(tmp_path):
    config = CONFIGS["spleen"]()
    config.init("spleen", str(tmp_path / "model"), {"download_weights": "false"}, None)
    return config.trainer()


def test_training_skips_failing_studies_and_names_them_in_the_train_stats(datastore, tmp_path):
    trainer = spleen_trainer(tmp_path)
    trainer({"max_epochs": 1, "val_split": 0.0}, datastore)

    stats = trainer.stats()  # what /info/ shows as train_stats["spleen"]
    assert stats["epoch"] == 1 and stats["total_time"]
    assert "spleen" in stats["eval"]["metrics"]["val_dice_per_class"]
    skipped = {s["image"]: s["reason"] for s in stats["skipped"]}
    assert set(skipped) == {"other_grid", "unreadable"}, stats["skipped"]
    assert skipped["other_grid"].startswith("LabelOnImageGridd: InvalidImageError: the label does not lie on its image's voxel grid")
    assert "spacing (0.8, 0.8, 5.0) mm" in skipped["other_grid"] and "spacing (3.0, 3.0, 3.0) mm" in skipped["other_grid"]
    assert skipped["unreadable"].startswith("LoadImaged: ")
    assert str(tmp_path) not in str(stats["skipped"]), "the server's folders are not shown to clients"
    assert (tmp_path / "model" / "spleen.pt").exists(), "the run published its model"


def test_a_run_where_every_study_fails_says_which_and_why(datastore, tmp_path):
    shutil.copy(tmp_path / "unreadable.nii.gz", datastore.get_label_uri("good", "final"))
    with pytest.raises(NoStudyToTrainError) as e:
        spleen_trainer(tmp_path)({"max_epochs": 1, "val_split": 0.0}, datastore)
    assert all(f"'{study}': " in str(e.value) for study in ("good", "other_grid", "unreadable")), e.value
