"""The studies of the shifted active-learning study (bench/active_learning_shifted.py): phantoms of a source
protocol, and a target site whose studies are partly like the source and partly shifted in ways an annotation
team meets at a new site, at uneven prevalence.

Visible shifts are the ones a DICOM header shows, so a careful lead could stratify by them: arterial phase,
low dose, thick slices, a cut or off-centre field of view. Hidden shifts look like the source in every tag:
a missing spleen or kidney, metal with streaks, an enlarged liver or a liver lesion. Every study carries its
``group`` (what the tags say) and its ``subgroup`` (what it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from lib.activelearning.scoring import load_study
from lib.phantom import LABELS, REFERENCE_FOV_MM, make_phantom, ras_affine

# subgroup -> (group the DICOM tags show, studies in the target pool, target held-out studies)
SUBGROUPS: dict[str, tuple[str, int, int]] = {
    "source_like": ("standard", 16, 6),
    "arterial": ("arterial", 5, 2),
    "low_dose": ("low_dose", 3, 2),
    "thick_slices": ("thick_slices", 2, 2),
    "cut_fov": ("cut_fov", 2, 2),
    "missing_organ": ("standard", 2, 2),
    "metal": ("standard", 1, 2),
    "enlarged_or_lesion": ("standard", 2, 2),
}
SOFT_TISSUE_HU = 40.0


@dataclass
class Study:
    name: str
    subgroup: str
    group: str
    image: torch.Tensor  # (1, X, Y, Z) network input
    hu: torch.Tensor  # (1, X, Y, Z)
    label: torch.Tensor  # (X, Y, Z) int64 bundle channels


def _arterial(image: np.ndarray, label: np.ndarray) -> None:
    """Arterial phase (the aorta is already at 150 HU from the phantom): kidney cortex and spleen enhance
    more, the liver less than in the portal-venous phase the source is."""
    for name, offset in (("kidney_left", 90.0), ("kidney_right", 90.0), ("spleen", 35.0), ("liver", -20.0)):
        image[label == LABELS[name]] += offset


def _remove(image: np.ndarray, label: np.ndarray, name: str, rng: np.random.Generator) -> None:
    """An organ removed (splenectomy, nephrectomy): soft tissue where it was, no label."""
    organ = label == LABELS[name]
    image[organ] = SOFT_TISSUE_HU + rng.normal(0.0, 15.0, int(organ.sum()))
    label[organ] = 0


def _metal(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> None:
    """A metal implant by the spine with streaks: a 2,500 HU ball, bright and dark bands across the body in
    its axial slices (the labels stay what they were)."""
    spine = np.argwhere((label >= 18) & (label <= 41))
    if not len(spine):
        spine = np.argwhere(label > 0)
    cx, cy, cz = spine[rng.integers(len(spine))]
    x, y, z = np.ogrid[: image.shape[0], : image.shape[1], : image.shape[2]]
    ball = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 4
    slab = np.abs(z - cz) <= 2
    angle = np.arctan2(y - cy, x - cx)
    streaks = np.where(np.cos(6 * angle) > 0.7, 400.0, np.where(np.cos(6 * angle) < -0.7, -300.0, 0.0))
    body = image > -500
    image += np.where(slab & body, streaks, 0.0).astype(np.float32)
    image[ball] = 2500.0


def _enlarged_or_lesion(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> None:
    """Either hepatomegaly (the liver grown by 2 voxels into the soft tissue and fat around it) or a
    hypodense lesion inside it (10 HU; labelled liver, as TotalSegmentator's liver includes its lesions)."""
    liver = label == LABELS["liver"]
    if rng.random() < 0.5:
        grown = ndimage.binary_dilation(liver, iterations=2) & (label == 0) & (image > -200)
        image[grown] = float(np.median(image[liver]))
        label[grown] = LABELS["liver"]
    else:
        inside = np.argwhere(ndimage.binary_erosion(liver, iterations=3))
        cx, cy, cz = inside[rng.integers(len(inside))] if len(inside) else np.argwhere(liver)[0]
        x, y, z = np.ogrid[: image.shape[0], : image.shape[1], : image.shape[2]]
        lesion = ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 9) & liver
        image[lesion] = 10.0 + rng.normal(0.0, 10.0, int(lesion.sum()))


def _thick(image: np.ndarray) -> np.ndarray:
    """Slices twice as thick: pairs of slices averaged (partial volume), then repeated on the same grid."""
    depth = image.shape[2] - image.shape[2] % 2
    pairs = image[..., :depth].reshape(*image.shape[:2], depth // 2, 2).mean(-1)
    out = image.copy()
    out[..., :depth] = np.repeat(pairs, 2, axis=2)
    return out


def make_study(name: str, subgroup: str, seed: int, pixdim: float, tmp: Path) -> Study:
    """One study of ``subgroup``: a phantom of moderate anatomy variation from ``seed``, shifted."""
    rng = np.random.default_rng([seed, 7])
    shape = tuple(int(round(fov / pixdim)) for fov in REFERENCE_FOV_MM)
    phantom = make_phantom(shape, (pixdim,) * 3, seed=seed, variation=float(rng.uniform(0.2, 0.8)), contrast=subgroup == "arterial")
    image, label = phantom.image.astype(np.float32), phantom.label.copy()
    if subgroup == "arterial":
        _arterial(image, label)
    elif subgroup == "low_dose":
        image += rng.normal(0.0, 45.0, image.shape).astype(np.float32) * (image > -900)
    elif subgroup == "thick_slices":
        image = _thick(image)
    elif subgroup == "missing_organ":
        _remove(image, label, str(rng.choice(["spleen", "kidney_left", "kidney_right"])), rng)
    elif subgroup == "metal":
        _metal(image, label, rng)
    elif subgroup == "enlarged_or_lesion":
        _enlarged_or_lesion(image, label, rng)
    elif subgroup == "cut_fov":
        # The abdomen or the chest only, shifted off-centre by a fifth of the width (air fills in).
        keep = slice(0, int(shape[2] * 0.55)) if rng.random() < 0.5 else slice(int(shape[2] * 0.45), shape[2])
        image, label = image[..., keep], label[..., keep]
        shift = int(shape[0] / 5) * (1 if rng.random() < 0.5 else -1)
        image, label = np.roll(image, shift, axis=0), np.roll(label, shift, axis=0)
        edge = slice(0, shift) if shift > 0 else slice(shift, None)
        image[edge], label[edge] = -1000.0, 0
    elif subgroup != "source_like":
        raise ValueError(f"unknown subgroup {subgroup}")
    path = tmp / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.clip(np.rint(image), -1024, 3071).astype(np.int16), ras_affine(image.shape, (pixdim,) * 3)), str(path))
    net_input, hu = load_study(str(path), (pixdim,) * 3)
    assert net_input.shape[1:] == label.shape, (net_input.shape, label.shape)
    return Study(name, subgroup, SUBGROUPS[subgroup][0], net_input, hu, torch.as_tensor(label, dtype=torch.long))


def source_studies(count: int, first_seed: int, pixdim: float, tmp: Path, prefix: str) -> list[Study]:
    return [make_study(f"{prefix}{i:02d}", "source_like", first_seed + i, pixdim, tmp) for i in range(count)]


def target_studies(pixdim: float, tmp: Path, held_out: bool) -> list[Study]:
    """The target pool (or its held-out set: new seeds, the same subgroups)."""
    studies, seed = [], 20_000 if held_out else 10_000
    for subgroup, (_, in_pool, in_held_out) in SUBGROUPS.items():
        for i in range(in_held_out if held_out else in_pool):
            seed += 1
            studies.append(make_study(f"{'test' if held_out else 'pool'}_{subgroup}_{i}", subgroup, seed, pixdim, tmp))
    return studies
