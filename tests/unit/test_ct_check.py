"""The CT rule (lib/transforms/validate.py) tells CT in Hounsfield units from MR and non-images by its
intensities: crops of the shared CT pass, air or not; MR-like volumes, masks and NaN do not."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import CT
from lib.transforms.validate import InvalidImageError, check_ct_volume

NO_AIR = (slice(65, 85), slice(65, 85), slice(20, 25))  # 20x20x5 inside the abdomen


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return np.asarray(nib.load(str(CT)).dataobj).astype(np.float32)


def check(volume: np.ndarray) -> None:
    check_ct_volume(torch.as_tensor(volume)[None])


def test_whole_ct_and_a_crop_without_air_pass(ct):
    check(ct)
    crop = ct[NO_AIR]
    assert crop.min() == -131  # no air, no lung: only fat is below -30 HU
    check(crop)


def test_scanner_padding_below_air_is_not_counted(ct):
    padded = ct.copy()
    padded[:30] = -3024  # outside the reconstructed circle: a quarter of the volume
    check(padded)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda ct, rng: rng.integers(0, 4096, ct.shape).astype(np.float32), "lowest value 0"),  # MR magnitude / raw values
        (lambda ct, rng: (ct - ct.mean()) / ct.std(), "lowest value"),  # z-scored
        (lambda ct, rng: (ct > 100).astype(np.float32), "lowest value 0"),  # a mask
        (lambda ct, rng: ct - 4000, "far below air"),  # an intensity scale shifted far below HU
    ],
    ids=["mr_0_4095", "z_scored", "mask", "shifted"],
)
def test_not_ct_is_refused(ct, make, words):
    with pytest.raises(InvalidImageError, match="does not look like CT") as refused:
        check(make(ct, np.random.default_rng(0)))
    assert words in str(refused.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused(ct, value):
    broken = ct.copy()
    broken[5, 5, 5] = value
    with pytest.raises(InvalidImageError, match="1 voxels that are NaN or infinite"):
        check(broken)
