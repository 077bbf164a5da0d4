"""Training sees each image exactly as inference does: per model, the image tensor after the trainer's
preprocessing equals the infer task's, bit for bit; the label lands on the same grid with its values kept."""

from __future__ import annotations

import nibabel as nib
import pytest
import torch
from monai.transforms import Compose, Spacingd

from conftest import CT, SEG
from lib.configs import CONFIGS
from lib.pipelines import spleen, vista3d, wholebody

OFFLINE = {"download_weights": "false"}


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> dict[str, str]:
    """A 64 x 64 x 12 voxel piece of the shared CT (3 mm) and of its TotalSegmentator label, geometry kept."""
    folder = tmp_path_factory.mktemp("crop")
    piece = (slice(30, 94), slice(20, 84), slice(10, 22))
    nib.save(nib.load(CT).slicer[piece], folder / "image.nii.gz")
    nib.save(nib.load(SEG).slicer[piece], folder / "label.nii.gz")
    return {"image": str(folder / "image.nii.gz"), "label": str(folder / "label.nii.gz")}


def config(name: str, tmp_path):
    task = CONFIGS[name]()
    task.init(name, str(tmp_path / "model"), OFFLINE, None)
    return task


def assert_same_image_and_a_label_on_its_grid(inferred: torch.Tensor, trained: dict) -> None:
    image, label = trained["image"], trained["label"]
    assert image.dtype == inferred.dtype == torch.float32
    assert torch.equal(image.as_tensor(), inferred.as_tensor()), "training preprocesses the image unlike inference"
    assert torch.equal(image.affine, inferred.affine)
    assert label.shape == image.shape and torch.equal(label.affine, image.affine)
    assert torch.equal(label.as_tensor(), label.as_tensor().round()), "label values are no longer integers"
    assert len(torch.unique(label)) >= 2, "no foreground left in the label"


def assert_training_starts_like_validation(trainer, shared: int) -> None:
    """Training's own steps (label handling, patches, augmentation) come after the shared ones."""
    kinds = [type(t) for t in trainer.train_pre_transforms(None)]
    assert kinds[:shared] == [type(t) for t in trainer.val_pre_transforms(None)][:shared]


@pytest.mark.parametrize("highres", [False, True], ids=["lowres", "highres"])
def test_wholebody(crop, tmp_path, highres):
    task = config("wholebody", tmp_path)
    inferred = Compose(task.infer().pre_transforms({"highres": highres}))({"image": crop["image"]})["image"]
    trainer = task.trainer()["wholebody"]
    trainer._highres = highres
    trained = Compose(trainer.val_pre_transforms(None))(dict(crop))
    assert_same_image_and_a_label_on_its_grid(inferred, trained)
    assert_training_starts_like_validation(trainer, len(wholebody.preprocessing(wholebody.PIXDIM[highres], label_key="label")))


def test_wholebody_float32_resampling_would_differ(crop, tmp_path):
    """The trainer's former float32 resampling gives another image: the equality above has teeth."""
    task = config("wholebody", tmp_path)
    inferred = Compose(task.infer().pre_transforms({"highres": True}))({"image": crop["image"]})["image"]
    trainer = task.trainer()["wholebody"]
    trainer._highres = True
    steps = trainer.val_pre_transforms(None)
    at = next(i for i, t in enumerate(steps) if isinstance(t, Spacingd))
    steps[at] = Spacingd(keys=("image", "label"), pixdim=(1.5,) * 3, mode=("bilinear", "nearest"), dtype=torch.float32)
    assert not torch.equal(Compose(steps)(dict(crop))["image"].as_tensor(), inferred.as_tensor())


def test_spleen(crop, tmp_path):
    task = config("spleen", tmp_path)
    inferred = Compose(task.infer().pre_transforms({}))({"image": crop["image"]})["image"]
    trainer = task.trainer()
    trained = Compose(trainer.val_pre_transforms(None))(dict(crop))
    assert_same_image_and_a_label_on_its_grid(inferred, trained)
    assert_training_starts_like_validation(trainer, len(spleen.preprocessing(label_key="label")))


def test_vista3d(crop, tmp_path):
    task = config("vista3d", tmp_path)
    inferred = task.runtime.preprocess(crop["image"])[0].image
    trainer = task.trainer()
    # A saved label of liver (5 in TotalSegmentator v2) and the right kidney (2), mapped to VISTA3D's 1 and 5,
    # then validated as classes 1 and 2.
    trainer._run = {"class_ids": [1, 5], "patch_size": (32, 32, 32)}
    trained = Compose(trainer.val_pre_transforms(None))({**crop, "label_mapping": "[[5, 1], [2, 5]]"})
    assert_same_image_and_a_label_on_its_grid(inferred, trained)
    assert trained["label"].dtype == torch.uint8 and set(torch.unique(trained["label"]).tolist()) == {0, 1, 2}
    assert_training_starts_like_validation(trainer, len(vista3d.preprocessing(task.pixdim, (0.0, 1.0), 10, label_key="label")))
