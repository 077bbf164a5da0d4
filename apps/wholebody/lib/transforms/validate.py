"""Checks that an input is a CT volume before any model sees it."""

from __future__ import annotations

import torch
from monai.transforms import MapTransform

# Air is about -1000 HU and fat about -100 HU; a CT of the body always holds some voxels below
# this, while MR and other modalities store non-negative intensities.
MIN_CT_VALUE = -150.0


class InvalidImageError(ValueError):
    """The image cannot be segmented as given (not 3D, several channels, not CT)."""


def check_ct_volume(image: torch.Tensor, name: str = "image") -> None:
    """``image``: (C, X, Y, Z) channel-first, as after EnsureChannelFirstd."""
    shape = tuple(image.shape)
    if image.ndim != 4:
        raise InvalidImageError(f"{name} must be a 3D volume, got an array of shape {shape[1:] or shape}")
    if shape[0] != 1:
        raise InvalidImageError(f"{name} must have one channel (a 3D CT), got {shape[0]} channels/timepoints")
    if min(shape[1:]) < 2:
        raise InvalidImageError(f"{name} must be a 3D volume, got shape {shape[1:]} (a single slice)")
    if not torch.is_floating_point(image) and image.dtype == torch.bool:
        raise InvalidImageError(f"{name} is a mask, not a CT")
    lowest = float(image.min())
    if lowest > MIN_CT_VALUE:
        raise InvalidImageError(
            f"{name} does not look like CT in Hounsfield units (lowest value {lowest:g}, expected air or fat "
            f"below {MIN_CT_VALUE:g}); MR and other modalities are not supported"
        )


class CheckCTVolumed(MapTransform):
    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            check_ct_volume(d[key], key)
        return d
