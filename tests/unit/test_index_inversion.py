"""IndexInvertibleSpacingd: labels inverted by index are MONAI's nearest inversion to the bit."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Spacingd, SpatialResample

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps" / "wholebody"))
from lib.pipelines import wholebody as pipeline  # noqa: E402
from lib.transforms.index_inversion import IndexInvertibleSpacingd  # noqa: E402


def _ct(path: Path, shape, zooms, rotation: float = 0.0) -> str:
    affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    affine[:3, 3] = [100.3, 80.7, -200.1]
    c, s = np.cos(rotation), np.sin(rotation)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
    hu = np.random.default_rng(0).normal(0, 300, shape).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, affine), path)
    return str(path)


def _inverted(image: str, pixdim: float, spacing, nearest: bool = True) -> MetaTensor:
    """Random labels on the resampled grid (every voxel a boundary: any index slip shows), inverted."""
    pre = pipeline.preprocessing((pixdim,) * 3, "cpu")
    pre[[type(t).__name__ for t in pre].index("IndexInvertibleSpacingd")] = spacing
    pre = Compose(pre)
    data = pre({"image": image})
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 105, data["image"].shape[1:], dtype=np.uint8))
    data["pred"] = MetaTensor(labels[None], affine=data["image"].affine, meta=data["image"].meta)
    post = pipeline.postprocessing(pre)
    post[0].nearest_interp = (nearest,)  # Invertd keeps one flag per key
    return Compose(post)(data)["pred"]


@pytest.mark.parametrize(
    "shape, zooms, pixdim, rotation",
    [
        ((96, 96, 60), (0.8, 0.8, 1.5), 3.0, 0.0),  # z 1.5 -> 3 mm: every other slice is an exact half-voxel tie
        ((96, 96, 60), (0.8, 0.8, 1.5), 1.5, 0.0),
        ((61, 50, 56), (3.0, 3.0, 3.0), 1.5, 0.0),  # the shared CT's geometry, highres
        ((77, 91, 53), (0.7, 0.93, 2.5), 3.0, 0.2),  # odd sizes, oblique in-plane direction
    ],
)
def test_labels_inverted_by_index_equal_monais(tmp_path, shape, zooms, pixdim, rotation):
    image = _ct(tmp_path / "ct.nii.gz", shape, zooms, rotation)
    ours = _inverted(image, pixdim, IndexInvertibleSpacingd(keys="image", pixdim=(pixdim,) * 3, mode="bilinear"))
    monai = _inverted(image, pixdim, Spacingd(keys="image", pixdim=(pixdim,) * 3, mode="bilinear"))
    assert ours.shape == monai.shape == shape
    assert torch.equal(ours.as_tensor(), monai.as_tensor())
    assert torch.equal(ours.affine, monai.affine)


def test_no_full_size_resampling_for_nearest_and_monais_for_the_rest(tmp_path, monkeypatch):
    image = _ct(tmp_path / "ct.nii.gz", (96, 96, 60), (0.8, 0.8, 1.5))
    spacing = IndexInvertibleSpacingd(keys="image", pixdim=(3.0,) * 3, mode="bilinear")
    expected = _inverted(image, 3.0, Spacingd(keys="image", pixdim=(3.0,) * 3, mode="bilinear"), nearest=False)

    forward, sizes = SpatialResample.__call__, []

    def recording(self, img, *args, **kwargs):
        size = kwargs.get("spatial_size")
        sizes.append(None if size is None else tuple(int(n) for n in size))
        return forward(self, img, *args, **kwargs)

    monkeypatch.setattr(SpatialResample, "__call__", recording)
    assert _inverted(image, 3.0, spacing).shape == (96, 96, 60)
    assert sizes and (96, 96, 60) not in sizes  # only the forward resampling to 3 mm went through MONAI's grid
    # Bilinear (e.g. probabilities) is not a label lookup: it still goes to MONAI, with MONAI's result.
    sizes.clear()
    bilinear = _inverted(image, 3.0, spacing, nearest=False)
    assert (96, 96, 60) in sizes
    assert torch.equal(bilinear.as_tensor(), expected.as_tensor())
