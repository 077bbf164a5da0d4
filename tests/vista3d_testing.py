"""What the VISTA3D tests share: a tiny VISTA3D built from monai's classes (every code path, fast on a
CPU), bitwise comparison of logits with NaN outside the windows, and points as monai's inferers take them."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.networks.nets import SegResNetDS2
from monai.networks.nets.vista3d import VISTA3D, ClassMappingClassify, PointMappingSAM


def tiny_vista3d(seed: int = 0, encoder_levels: int = 2) -> VISTA3D:
    """VISTA3D with 8 features; ``encoder_levels`` (2 to 5) downsampling levels of its encoder."""
    torch.manual_seed(seed)
    f = 8
    encoder = SegResNetDS2(
        in_channels=1, blocks_down=(1,) * encoder_levels, norm="instance", out_channels=f, init_filters=f, dsdepth=1
    )
    return VISTA3D(
        image_encoder=encoder,
        class_head=ClassMappingClassify(n_classes=512, feature_size=f, use_mlp=True),
        point_head=PointMappingSAM(feature_size=f, n_classes=512, last_supported=132),
    ).eval()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, NaN == NaN."""
    a = a.as_tensor() if isinstance(a, MetaTensor) else a
    b = b.as_tensor() if isinstance(b, MetaTensor) else b
    if a.shape != b.shape or not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    return torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))


def pts(*xyz) -> torch.Tensor:
    """Points ``(i, j, k), ...`` of one object: [1, N, 3] float."""
    return torch.tensor([list(map(float, p)) for p in xyz])[None]
