"""Checks that an input is a CT volume in Hounsfield units before any model sees it.

The rule tells CT from MR and from non-images by its intensities, so that a crop without air passes:

1. every voxel is finite (no NaN or Inf);
2. at least ``MIN_CT_SHARE`` of the voxels lie at or above ``LOWEST_CT_VALUE``: nothing in a body is
   far below air (-1000 HU). Voxels at the volume's minimum are not counted when it lies below that
   (scanners fill what lies outside the reconstructed circle with -2000, -3024 or -32768);
3. some voxel lies below ``MAX_FAT_VALUE`` (-30 HU): fat (-190 to -30), lung or air, or water's noise
   in a crop of soft tissue. MR magnitude images, masks, PET and raw stored values (0..4095) hold no
   negative values; a z-scored MR none that low.

Limits: a CT crop that lies wholly in bone, contrast or dense organ (no voxel below -30 HU; 2 % of the
20x20x5 crops inside the body of the shared CT) is refused; an MR whose resampling left negative
values below -30 in its intensity scale, or an MR phase image with values mostly above -1200, passes.
"""

from __future__ import annotations

import torch
from monai.transforms import MapTransform

LOWEST_CT_VALUE = -1200.0
MIN_CT_SHARE = 0.95
MAX_FAT_VALUE = -30.0


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
    values = torch.as_tensor(image)
    if torch.is_floating_point(values):
        not_finite = int((~torch.isfinite(values)).sum())
        if not_finite:
            raise InvalidImageError(f"{name} has {not_finite} voxels that are NaN or infinite")
    lowest = float(values.min())
    counted = values.numel() - (int((values == lowest).sum()) if lowest < LOWEST_CT_VALUE else 0)
    in_range = int((values >= LOWEST_CT_VALUE).sum())
    if counted and in_range < MIN_CT_SHARE * counted:
        raise InvalidImageError(
            f"{name} does not look like CT in Hounsfield units: {100 * (1 - in_range / counted):.0f} % of its voxels lie "
            f"below {LOWEST_CT_VALUE:g} (far below air, -1000 HU); MR and other modalities are not supported"
        )
    if lowest >= MAX_FAT_VALUE:
        raise InvalidImageError(
            f"{name} does not look like CT in Hounsfield units (lowest value {lowest:g}, expected fat, lung or air "
            f"below {MAX_FAT_VALUE:g}); MR and other modalities are not supported"
        )


class CheckCTVolumed(MapTransform):
    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            check_ct_volume(d[key], key)
        return d
