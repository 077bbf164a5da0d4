"""Reads just enough of an image file to refuse what no model here can segment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import nibabel as nib
import nrrd
import numpy as np
import torch

from lib.transforms.validate import InvalidImageError, check_ct_volume

NIFTI = (".nii", ".nii.gz")
NRRD = (".nrrd",)
SUPPORTED = NIFTI + NRRD


@dataclass(frozen=True)
class ImageHeader:
    shape: tuple[int, ...]


def extension(path: str) -> str:
    name = os.path.basename(path).lower()
    for ext in SUPPORTED:
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def read_header(path: str) -> ImageHeader:
    """Raises InvalidImageError when the file is not a readable NIfTI/NRRD or not 3D."""
    ext = extension(path)
    try:
        if ext in NIFTI:
            shape = tuple(int(s) for s in nib.load(path).shape)
        elif ext in NRRD:
            shape = tuple(int(s) for s in nrrd.read_header(path)["sizes"])
        else:
            raise InvalidImageError(f"unsupported image format '{ext}': use {', '.join(SUPPORTED)}")
    except InvalidImageError:
        raise
    except Exception as e:  # nibabel and pynrrd raise many types for garbage input
        raise InvalidImageError(f"cannot read '{os.path.basename(path)}' as {ext} image: {e}") from None
    squeezed = tuple(s for s in shape[3:] if s != 1)
    if len(shape) < 3 or squeezed or min(shape[:3]) < 2:
        raise InvalidImageError(f"image must be a 3D volume, got shape {shape}")
    return ImageHeader(shape=shape[:3])


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


def check_label_file(path: str, image_shape: tuple[int, ...], max_value: int = 255) -> np.ndarray:
    """A label must match its image voxel for voxel and hold small non-negative integers."""
    header = read_header(path)
    if header.shape != tuple(image_shape):
        raise InvalidImageError(f"label shape {header.shape} does not match the image shape {tuple(image_shape)}")
    label = read_volume(path).reshape(header.shape)
    fractional = np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label))
    if label.size and (fractional or label.min() < 0 or label.max() > max_value):
        raise InvalidImageError(f"label values must be integers in [0, {max_value}]")
    return label
