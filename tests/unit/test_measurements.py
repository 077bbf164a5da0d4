"""Per-structure measurements (lib/measurements) against plain numpy on built volumes with known figures."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from lib.measurements.on_image import measure_on_image
from lib.measurements.structures import measure

SPACING = (0.8, 1.25, 3.0)  # anisotropic: a voxel is 3 mm³ = 0.003 ml
ORIGIN = (-100.0, 40.0, 500.0)
NAMES = {1: "liver", 2: "spleen", 7: "vertebrae_L1"}


def _volumes(seed: int = 0):
    """(labels, HU) 40 x 30 x 12: a liver block of constant 60 HU, a spleen with random HU, and a
    vertebra touching the volume's edge (index 0 on the first axis, last slice on the third)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((40, 30, 12), np.uint8)
    hu = rng.integers(-1000, 1500, labels.shape).astype(np.int16)
    labels[5:15, 5:25, 2:8] = 1
    hu[5:15, 5:25, 2:8] = 60
    labels[20:30, 3:9, 1:5] = 2
    labels[0:4, 10:20, 9:12] = 7
    return labels, hu


def _ras_affine():
    return np.array(
        [[SPACING[0], 0, 0, ORIGIN[0]], [0, SPACING[1], 0, ORIGIN[1]], [0, 0, SPACING[2], ORIGIN[2]], [0, 0, 0, 1]]
    )


def _expected(labels, hu, affine_ras, value):
    """One structure's figures the slow, obvious way."""
    mask = labels == value
    values = hu[mask].astype(np.float64)
    ijk = np.argwhere(mask).astype(np.float64)
    lps = (ijk @ affine_ras[:3, :3].T + affine_ras[:3, 3]) * [-1, -1, 1]
    return {
        "voxels": int(mask.sum()),
        "volume_ml": mask.sum() * abs(np.linalg.det(affine_ras[:3, :3])) / 1000,
        "hu_mean": values.mean(),
        "hu_std": values.std(),
        "hu_median": np.median(values),
        "hu_p5": np.percentile(values, 5),
        "hu_p95": np.percentile(values, 95),
        "centroid_lps_mm": lps.mean(axis=0),
        "bbox_lps_mm": [lps.min(axis=0), lps.max(axis=0)],
    }


def _assert_matches(found, labels, hu, affine_ras):
    assert [m["label"] for m in found] == sorted(set(np.unique(labels)) - {0})
    for m in found:
        expected = _expected(labels, hu, affine_ras, m["label"])
        assert m["voxels"] == expected["voxels"]
        for key in ("volume_ml", "hu_mean", "hu_std", "hu_median", "hu_p5", "hu_p95"):
            assert m[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-9), (m["name"], key)
        np.testing.assert_allclose(m["centroid_lps_mm"], expected["centroid_lps_mm"], atol=1e-9)
        np.testing.assert_allclose(m["bbox_lps_mm"], expected["bbox_lps_mm"], atol=1e-9)


@pytest.fixture(params=[None, 700], ids=["one slab", "slabs of one row"])
def slabs(request, monkeypatch):
    """The volume in one slab, and in slabs of one first-axis row (as a full-size CT is cut)."""
    from lib.measurements.structures import _Sums

    if request.param:
        monkeypatch.setattr(_Sums, "SLAB_VOXELS", request.param)


def test_figures_match_numpy_per_structure(slabs):
    labels, hu = _volumes()
    found = measure(labels, hu, _ras_affine(), NAMES)
    assert [m["name"] for m in found] == ["liver", "spleen", "vertebrae_L1"]
    _assert_matches(found, labels, hu, _ras_affine())
    liver = found[0]
    # Known by construction: 10 x 20 x 6 voxels of 3 mm³ at 60 HU.
    assert liver["voxels"] == 1200 and liver["volume_ml"] == pytest.approx(3.6)
    assert liver["hu_mean"] == liver["hu_median"] == liver["hu_p5"] == liver["hu_p95"] == 60 and liver["hu_std"] == 0
    # The liver's first voxel (5, 5, 2) lies at RAS (-96, 46.25, 506): LPS (96, -46.25, 506).
    assert liver["bbox_lps_mm"][1] == pytest.approx([96.0, -46.25, 521.0])
    assert liver["bbox_lps_mm"][0] == pytest.approx([96.0 - 9 * 0.8, -46.25 - 19 * 1.25, 506.0])


def test_fractional_hu_and_unnamed_labels(slabs):
    labels, hu = _volumes(seed=1)
    image = hu.astype(np.float32)
    image[20:] = image[20:] * 0.37 + 0.125  # integer HU in the first slabs only
    found = measure(labels, image, _ras_affine(), {})
    assert [m["name"] for m in found] == ["label_1", "label_2", "label_7"]
    for m in found:
        expected = _expected(labels, image, _ras_affine(), m["label"])
        for key in ("hu_median", "hu_p5", "hu_p95", "hu_mean", "hu_std"):
            assert m[key] == pytest.approx(expected[key], abs=1e-6)


def test_empty_result_gives_an_empty_list():
    labels = np.zeros((8, 8, 4), np.uint8)
    assert measure(labels, np.zeros(labels.shape), _ras_affine(), NAMES) == []


def test_grids_must_agree():
    with pytest.raises(ValueError, match="one 3D grid"):
        measure(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5)), np.eye(4), {})


@pytest.mark.parametrize("stored_as", ["RAS", "LPS"])
def test_files_in_ras_and_lps_give_the_same_patient_figures(tmp_path, stored_as):
    """The same body stored with its first two axes flipped (as DICOM-converted files are, LPS)
    gives the same figures in patient coordinates, read through the loader /infer uses."""
    labels, hu = _volumes()
    affine = _ras_affine()
    if stored_as == "LPS":
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:3, 3] = [labels.shape[0] - 1, labels.shape[1] - 1, 0]
        affine = affine @ flip  # index i of the flipped array is index (n - 1 - i) of the original
        labels, hu = labels[::-1, ::-1].copy(), hu[::-1, ::-1].copy()
    path = str(tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(hu, affine), path)
    found = measure_on_image(labels, path, NAMES)
    reference = measure(*_volumes(), _ras_affine(), NAMES)
    for m, r in zip(found, reference):
        for key in ("voxels", "volume_ml", "hu_mean", "hu_p95"):
            assert m[key] == pytest.approx(r[key])
        np.testing.assert_allclose(m["centroid_lps_mm"], r["centroid_lps_mm"], atol=1e-4)
        np.testing.assert_allclose(m["bbox_lps_mm"], r["bbox_lps_mm"], atol=1e-4)
