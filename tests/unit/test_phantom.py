"""Synthetic CT phantom: HU ranges, labels, orientation and the idempotent writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "wholebody"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from conftest import CHANNELS  # noqa: E402
from lib.phantom import LABELS, PHANTOM_NAME, VERTEBRA_LABELS, make_phantom, write_phantom  # noqa: E402

HU_RANGES = {
    "liver": (50, 70),
    "spleen": (35, 55),
    "kidney_right": (20, 40),
    "kidney_left": (20, 40),
    "aorta": (30, 50),
    **{name: (-900, -800) for name in LABELS if name.startswith("lung_")},
}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


def world_centroid(phantom, index: int) -> np.ndarray:
    voxel = np.argwhere(phantom.label == index).mean(axis=0)
    return phantom.affine[:3, :3] @ voxel + phantom.affine[:3, 3]


def test_types_and_affine(phantom):
    assert phantom.image.shape == phantom.label.shape == (120, 100, 80)
    assert phantom.image.dtype == np.int16 and phantom.label.dtype == np.uint8
    assert nib.aff2axcodes(phantom.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(phantom.affine)[:3], 3.0)


def test_label_indices_match_bundle_channels():
    channels = json.loads(CHANNELS.read_text())
    for name, index in {**LABELS, **VERTEBRA_LABELS}.items():
        assert channels[str(index)] == name


def test_every_organ_present(phantom):
    for name, index in LABELS.items():
        assert (phantom.label == index).sum() > 500, name
    present = set(np.unique(phantom.label)) & set(VERTEBRA_LABELS.values())
    assert len(present) >= 6


@pytest.mark.parametrize("name", sorted(HU_RANGES))
def test_organ_hu(phantom, name):
    lo, hi = HU_RANGES[name]
    assert lo <= phantom.image[phantom.label == LABELS[name]].mean() <= hi


def test_tissue_hu(phantom):
    img = phantom.image
    assert img[0, 0, :].mean() < -950  # corner voxels are air
    assert 10 <= img[phantom.label == LABELS["liver"]].std() <= 20  # CT-like noise inside an organ
    assert 30 <= img[img.shape[0] // 2, 65:80, 5].mean() <= 50  # anterior abdominal soft tissue
    body = img[phantom.label == 0]
    assert ((body > -150) & (body < -60)).sum() > 10_000  # subcutaneous fat rim


def test_vertebrae_bone(phantom):
    bone = phantom.image[np.isin(phantom.label, list(VERTEBRA_LABELS.values()))]
    assert np.percentile(bone, 90) > 550  # cortical shell
    assert 150 < np.percentile(bone, 10) < 400  # cancellous core


def test_liver_on_patient_right_spleen_left(phantom):
    # RAS+: world x grows towards the patient's right.
    assert world_centroid(phantom, LABELS["liver"])[0] > 20
    assert world_centroid(phantom, LABELS["spleen"])[0] < -20
    assert world_centroid(phantom, LABELS["kidney_right"])[0] > 20
    assert world_centroid(phantom, LABELS["kidney_left"])[0] < -20
    aorta = world_centroid(phantom, LABELS["aorta"])
    spine = world_centroid(phantom, VERTEBRA_LABELS["vertebrae_L1"])
    assert aorta[0] < spine[0] and aorta[1] > spine[1]  # left-anterior of the spine


def test_lungs_superior_to_liver(phantom):
    liver_z = world_centroid(phantom, LABELS["liver"])[2]
    for name, index in LABELS.items():
        if name.startswith("lung_"):
            assert world_centroid(phantom, index)[2] > liver_z, name
    spine = [world_centroid(phantom, i)[2] for i in sorted(VERTEBRA_LABELS.values()) if (phantom.label == i).any()]
    assert spine == sorted(spine)  # lumbar at the bottom, thoracic above


def test_deterministic_by_default():
    a, b = make_phantom(seed=0), make_phantom(seed=0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, make_phantom(seed=5).label)


def test_variation_changes_anatomy():
    labels = [make_phantom(seed=s, variation=0.8).label for s in (1, 2)]
    assert not np.array_equal(labels[0], labels[1])
    volumes = [(lab == LABELS["liver"]).sum() for lab in labels]
    assert volumes[0] != volumes[1]
    with pytest.raises(ValueError):
        make_phantom(variation=1.5)


@pytest.mark.parametrize("seed", range(5))
def test_varied_anatomy_stays_plausible(seed):
    p = make_phantom(seed=seed, variation=1.0)
    for name, index in LABELS.items():
        assert (p.label == index).sum() > 100, name
    assert world_centroid(p, LABELS["liver"])[0] > 20 > -20 > world_centroid(p, LABELS["spleen"])[0]
    liver_z = world_centroid(p, LABELS["liver"])[2]
    assert all(world_centroid(p, i)[2] > liver_z for n, i in LABELS.items() if n.startswith("lung_"))


def test_contrast_aorta():
    p = make_phantom(contrast=True)
    assert 130 <= p.image[p.label == LABELS["aorta"]].mean() <= 170


def test_write_round_trip_and_no_overwrite(tmp_path):
    ct, lab = tmp_path / "images" / PHANTOM_NAME, tmp_path / "labels" / PHANTOM_NAME
    assert write_phantom(ct, lab, seed=1)
    img = nib.load(ct)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), (3.0, 3.0, 3.0))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj), make_phantom(seed=1).image)
    label = nib.load(lab)
    assert label.get_data_dtype() == np.uint8
    np.testing.assert_allclose(label.affine, img.affine)

    before = ct.read_bytes()
    assert not write_phantom(ct, lab, seed=2)
    assert ct.read_bytes() == before
    assert sorted(p.name for p in ct.parent.iterdir()) == [PHANTOM_NAME]  # no temp files left


def test_cli_is_idempotent(tmp_path):
    labels = tmp_path / "labels" / "final"
    cmd = [sys.executable, "-m", "lib.phantom", str(tmp_path), "--seed", "3", "--variation", "0.5"]
    first = subprocess.run([*cmd, "--with-label", str(labels)], cwd=APP_DIR, capture_output=True, text=True, check=True)
    assert "wrote" in first.stdout
    assert nib.load(labels / PHANTOM_NAME).shape == (120, 100, 80)
    written = (tmp_path / PHANTOM_NAME).stat().st_mtime_ns
    second = subprocess.run(cmd, cwd=APP_DIR, capture_output=True, text=True, check=True)
    assert "already exists" in second.stdout
    assert (tmp_path / PHANTOM_NAME).stat().st_mtime_ns == written
