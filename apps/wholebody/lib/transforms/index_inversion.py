"""Spacingd whose nearest-neighbour inverse picks labels by index instead of through a full-size float grid.

MONAI inverts ``Spacingd`` for labels (``Invertd(nearest_interp=True)``) with ``affine_grid`` + ``grid_sample``
over the whole output: on a 512x512x397 CT that is a float64 grid of 104 M x 3 coordinates, a float64 copy of the
labels and a float output (4.6 s and several GB here) to move uint8 labels. Spacing only scales and shifts each
axis (the direction is kept), so the sampling grid is separable: the source index along each axis depends on that
axis alone. The index vectors are computed with the same ``affine_grid`` / ``grid_sample`` calls on one line per
axis (so rounding, including exact half-voxel ties, is MONAI's to the bit), and the labels are gathered with
them. Anything else (another mode or padding, a rotation, lazy or GPU tensors) goes through MONAI unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.utils import to_norm_affine
from monai.transforms import Spacingd, SpatialResample
from monai.utils import TraceKeys, get_torch_dtype_from_string

__all__ = ["IndexInvertibleSpacingd"]


class IndexInvertibleSpacingd(Spacingd):
    """MONAI's ``Spacingd``; its inverse is bit-identical to MONAI's and, for nearest interpolation on the CPU,
    gathers the labels by index."""

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            gathered = _invert_by_index(d[key], self.spacing_transform.sp_resample)
            d[key] = gathered if gathered is not None else self.spacing_transform.inverse(d[key])
        return d


def _invert_by_index(img: torch.Tensor, resample: SpatialResample) -> MetaTensor | None:
    """``resample``'s inverse of its most recent op on ``img`` by index, or None where MONAI must do it."""
    if not isinstance(img, MetaTensor) or img.device.type != "cpu" or img.ndim != 4 or img.pending_operations:
        return None
    op = resample.get_most_recent_transform(img)
    info = op[TraceKeys.EXTRA_INFO]
    if info["mode"] != "nearest" or info["padding_mode"] != "border" or info["align_corners"] not in (False, TraceKeys.NONE):
        return None
    src_size = tuple(int(n) for n in img.shape[1:])
    dst_size = tuple(int(n) for n in op[TraceKeys.ORIG_SIZE])
    dtype = get_torch_dtype_from_string(info["dtype"])
    # What monai.transforms.spatial.functional.spatial_resample and AffineTransform compute for this inverse.
    src_affine = img.peek_pending_affine().to(torch.float64)
    dst_affine = torch.as_tensor(info["src_affine"], dtype=torch.float64)
    xform = torch.as_tensor(np.linalg.solve(src_affine.numpy(), dst_affine.numpy()), dtype=torch.float64)
    theta = to_norm_affine(xform.to(dtype)[None], src_size, dst_size, align_corners=False, zero_centered=False)
    reverse = torch.tensor([2, 1, 0])  # grid_sample's coordinates run (x, y, z) = last spatial axis first
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    linear = theta[0, :3, :3]
    if torch.count_nonzero(linear - torch.diag(torch.diagonal(linear))):
        return None  # not axis-aligned: not separable
    resample.pop_transform(img)

    labels = img.as_tensor()
    for axis in range(3):
        labels = labels.index_select(axis + 1, _source_indices(theta, axis, src_size[axis], dst_size[axis], dtype))
    out = MetaTensor(labels, meta=dict(img.meta), applied_operations=img.applied_operations)
    out.affine = src_affine @ xform
    return out


def _source_indices(theta: torch.Tensor, axis: int, src_len: int, dst_len: int, dtype: torch.dtype) -> torch.Tensor:
    """For each output position along ``axis``, the source index MONAI's nearest ``grid_sample`` reads.

    The grid's coordinate for this axis is ``affine_grid`` on a line along it (the other axes' terms are zero in an
    axis-aligned theta); sampling ``arange(src_len)`` at it returns the rounded, border-clamped index itself.
    """
    line = [1, 1, 1, 1, 1]
    line[2 + axis] = dst_len
    grid = F.affine_grid(theta[:, :3], size=line, align_corners=False)
    coordinate = 2 - axis
    on_axis = torch.zeros_like(grid)  # other coordinates 0: index 0 of their length-1 source axes
    on_axis[..., coordinate] = grid[..., coordinate]
    source = [1, 1, 1, 1, 1]
    source[2 + axis] = src_len
    positions = torch.arange(src_len, dtype=dtype).reshape(source)
    picked = F.grid_sample(positions, on_axis, mode="nearest", padding_mode="border", align_corners=False)
    return picked.reshape(-1).long()
