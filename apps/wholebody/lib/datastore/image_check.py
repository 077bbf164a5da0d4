"""Reads just enough of an image file to refuse what no model here can segment, and a label that
does not lie on its image's voxel grid."""

from __future__ import annotations

import os
from dataclasses import dataclass

import nibabel as nib
import nrrd
import numpy as np
import torch

from lib.transforms.label_grid import on_same_grid
from lib.transforms.validate import InvalidImageError, check_ct_volume

NIFTI = (".nii", ".nii.gz")
NRRD = (".seg.nrrd", ".nrrd")
SUPPORTED = NIFTI + NRRD

# NRRD spaces -> sign flips to RAS (what NIfTI and MONAI's readers use).
_TO_RAS = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}


@dataclass(frozen=True)
class ImageHeader:
    shape: tuple[int, ...]  # spatial (3D)
    affine: np.ndarray  # voxel index -> RAS mm
    layers: int = 1  # a Slicer .seg.nrrd with overlapping segments has several

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(round(float(s), 4) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, ...]:
        return tuple(round(float(o), 3) for o in self.affine[:3, 3])

    @property
    def direction(self) -> tuple[float, ...]:
        return tuple(round(float(d), 3) for d in (self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)).T.ravel())

    def describe(self) -> str:
        return f"shape {self.shape}, spacing {self.spacing}, origin {self.origin}, direction {self.direction} (RAS)"


def extension(path: str) -> str:
    name = os.path.basename(path).lower()
    for ext in SUPPORTED:
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def _nrrd_affine(header: dict, spatial_axes: list[int]) -> np.ndarray:
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        rows = np.asarray([directions[a] for a in spatial_axes], dtype=float)
        if rows.shape == (3, 3) and np.all(np.isfinite(rows)):
            affine[:3, :3] = rows.T
    if header.get("space origin") is not None:
        affine[:3, 3] = np.asarray(header["space origin"], dtype=float)[:3]
    flips = _TO_RAS.get(str(header.get("space", "")).lower())
    if flips is None and header.get("space") is not None:
        raise InvalidImageError(f"unsupported NRRD space '{header['space']}': use left-posterior-superior or right-anterior-superior")
    return np.diag([*(flips or (1, 1, 1)), 1]) @ affine


def _nrrd_header(path: str) -> tuple[tuple[int, ...], np.ndarray, int]:
    header = nrrd.read_header(path)
    sizes = tuple(int(s) for s in header["sizes"])
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    # Slicer writes overlapping segments as a leading "list" axis of layers.
    layered = len(sizes) == 4 and (kinds[:1] in (["list"], ["vector"]) or _no_direction(header, 0))
    if layered:
        return sizes[1:], _nrrd_affine(header, [1, 2, 3]), sizes[0]
    return sizes, _nrrd_affine(header, [0, 1, 2]) if len(sizes) >= 3 else np.eye(4), 1


def _no_direction(header: dict, axis: int) -> bool:
    directions = header.get("space directions")
    if directions is None or len(directions) <= axis:
        return False
    row = directions[axis]
    return row is None or not np.all(np.isfinite(np.asarray(row, dtype=float)))


def read_header(path: str, layers_allowed: bool = False) -> ImageHeader:
    """Raises InvalidImageError when the file is not a readable NIfTI/NRRD or not 3D (a label may
    have layers: ``layers_allowed``)."""
    ext = extension(path)
    layers = 1
    try:
        if ext in NIFTI:
            image = nib.load(path)
            shape, affine = tuple(int(s) for s in image.shape), np.asarray(image.affine, dtype=float)
        elif ext in NRRD:
            shape, affine, layers = _nrrd_header(path)
        else:
            raise InvalidImageError(f"unsupported image format '{ext}': use {', '.join(SUPPORTED)}")
    except InvalidImageError:
        raise
    except Exception as e:  # nibabel and pynrrd raise many types for garbage input
        raise InvalidImageError(f"cannot read '{os.path.basename(path)}' as {ext} image: {e}") from None
    squeezed = tuple(s for s in shape[3:] if s != 1)
    if len(shape) < 3 or squeezed or min(shape[:3]) < 2 or (layers > 1 and not layers_allowed):
        full = (layers, *shape) if layers > 1 else shape
        raise InvalidImageError(f"image must be a 3D volume, got shape {full}")
    return ImageHeader(shape=shape[:3], affine=affine, layers=layers)


def read_volume(path: str) -> np.ndarray:
    ext = extension(path)
    try:
        if ext in NIFTI:
            return np.asanyarray(nib.load(path).dataobj)
        return nrrd.read(path)[0]
    except Exception as e:
        raise InvalidImageError(f"cannot read the voxels of '{os.path.basename(path)}': {e}") from None


def check_ct_file(path: str) -> ImageHeader:
    """Full check of an upload: readable, 3D, and intensities in Hounsfield units."""
    header = read_header(path)
    volume = read_volume(path).reshape(header.shape)
    check_ct_volume(torch.as_tensor(np.asarray(volume, dtype=np.float32))[None], "image")
    return header


def same_grid(label: ImageHeader, image: ImageHeader) -> bool:
    return on_same_grid(label.shape, label.affine, image.shape, image.affine)


def check_label_file(path: str, image: ImageHeader, max_value: int = 255) -> tuple[ImageHeader, np.ndarray]:
    """A label must lie on its image's voxel grid (shape and affine; nothing is resampled) and hold
    small non-negative integers. Returns its header and voxels (layers first when it has several)."""
    header = read_header(path, layers_allowed=True)
    if not same_grid(header, image):
        raise InvalidImageError(
            f"the label does not lie on the image's voxel grid: label {header.describe()}; image {image.describe()}. "
            "Save the label on the image's own grid (it is not resampled)"
        )
    label = read_volume(path).reshape(((header.layers,) if header.layers > 1 else ()) + header.shape)
    fractional = np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label))
    if label.size and (fractional or label.min() < 0 or label.max() > max_value):
        raise InvalidImageError(f"label values must be integers in [0, {max_value}]")
    return header, label
