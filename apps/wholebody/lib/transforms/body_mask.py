"""Where the body is in a CT, so that sliding windows holding only air, table and empty field of view are not run.

The rule (``--conf skip_air true``, docs/performance.md):

1. voxels above ``threshold_hu`` (default -500 HU: soft tissue, fat, bone; not air, not lung);
2. the largest connected component of those (26-connectivity): the body, without a table that does not
   touch it, blankets, tubes, or noise in the corners;
3. holes filled in every axial slice: lungs, airways and bowel gas are inside the body. Per slice and not
   in 3D because a lung cut by the field of view's top or bottom slice is open to the volume's border in 3D;
4. dilated by ``margin_mm`` (a box of that half-width per axis), so that voxels just outside the
   threshold (the skin's partial-volume edge, a structure in air beside the skin) lie in windows that run.

All on blocks of ``BLOCK``^3 voxels, a block being above the threshold if any of its voxels is: the mask is
a little larger than the voxel rule's (by up to a block, 6 mm at 1.5 mm) and cheap enough to make per request.

Risk: whatever lies outside the mask cannot be found. Body parts not connected to the largest component
are lost: an arm beside the body when the shoulder is out of the field of view, one leg of a CT of
the legs alone. A window holding no mask voxel covers no mask voxel, so labels inside the mask do not change.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform
from monai.transforms.utils import get_largest_connected_component_mask
from monai.utils import convert_to_tensor
from scipy.ndimage import binary_fill_holes

from lib.conf import Conf

BODY_MASK_KEY = "body_mask"
THRESHOLD_HU = -500.0
MARGIN_MM = 10.0
SKIP_AIR = False  # --conf skip_air's default (docs/performance.md says why)
# The mask is built on blocks of BLOCK^3 voxels: 64x fewer voxels to label, fill and dilate (on a full-size CT at
# 1.5 mm the voxel-level mask took ~18 s here, as long as a tenth of the inference), and only windows read it.
BLOCK = 4


def body_mask(
    hu: torch.Tensor, spacing: Sequence[float], threshold_hu: float = THRESHOLD_HU, margin_mm: float = MARGIN_MM, block: int = BLOCK
) -> torch.Tensor:
    """hu: ``(X, Y, Z)`` Hounsfield units with Z the axial (superior) axis, ``spacing`` in mm -> bool mask
    ``(X, Y, Z)``, built on blocks of ``block``^3 voxels (a block is above the threshold if any voxel of it is)."""
    above = convert_to_tensor(hu, track_meta=False).cpu() > threshold_hu
    coarse = F.max_pool3d(above[None, None].to(torch.float32), kernel_size=block, stride=block, ceil_mode=True)[0, 0] > 0
    if not coarse.any():
        return above
    body = np.asarray(get_largest_connected_component_mask(coarse.numpy(), connectivity=3), dtype=bool)
    for z in range(body.shape[2]):
        body[:, :, z] = binary_fill_holes(body[:, :, z])
    body = dilate(torch.from_numpy(body), [math.ceil(margin_mm / (s * block)) for s in spacing])
    for axis in range(3):
        body = body.repeat_interleave(block, dim=axis)
    return body[: above.shape[0], : above.shape[1], : above.shape[2]].contiguous()


def dilate(mask: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Box dilation by ``radius`` voxels per axis, one axis at a time (a box is separable: O(radius) per voxel)."""
    out = mask[None, None].to(torch.float32)
    for axis, r in enumerate(radius):
        if r > 0:
            kernel = [1, 1, 1]
            kernel[axis] = 2 * r + 1
            padding = [0, 0, 0]
            padding[axis] = r
            out = F.max_pool3d(out, kernel_size=kernel, stride=1, padding=padding)
    return out[0, 0] > 0


class BodyMaskd(MapTransform):
    """Adds ``BODY_MASK_KEY``: the body mask ``(1, *spatial)`` of the channel-first image in HU (before any
    intensity scaling), in the image's voxel grid and spacing. The image itself is unchanged."""

    def __init__(self, keys: str = "image", threshold_hu: float = THRESHOLD_HU, margin_mm: float = MARGIN_MM):
        super().__init__(keys)
        self.threshold_hu = threshold_hu
        self.margin_mm = margin_mm

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            spacing = [float(s) for s in image.pixdim] if hasattr(image, "pixdim") else [1.0] * (image.ndim - 1)
            d[BODY_MASK_KEY] = body_mask(image[0], spacing, self.threshold_hu, self.margin_mm)[None]
        return d


def from_conf(conf: Conf) -> tuple[bool, BodyMaskd]:
    """``--conf skip_air true|false`` (whether requests skip air windows by default), ``body_hu`` and
    ``body_margin_mm`` (the mask's rule)."""
    skip = conf.bool("skip_air", SKIP_AIR)
    threshold = conf.float("body_hu", THRESHOLD_HU, low=-1000.0, high=1000.0)
    margin = conf.float("body_margin_mm", MARGIN_MM, low=0.0, high=200.0)
    return skip, BodyMaskd(threshold_hu=threshold, margin_mm=margin)
