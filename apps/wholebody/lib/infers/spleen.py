"""``spleen``: the UNet of the MONAI bundle spleen_ct_segmentation."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    CastToTyped,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SqueezeDimd,
)

from lib.infers.ct_segmentation import PRE_TRANSFORMS_KEY, CTSegmentationTask
from lib.transforms.validate import CheckCTVolumed


class SpleenSegmentation(CTSegmentationTask):
    """The bundle's pipeline. It inverts softmax probabilities with bilinear interpolation before
    the argmax, unlike wholebody; two channels are cheap enough to keep that exact."""

    def __init__(
        self,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        paths: Sequence[str],
        pixdim: Sequence[float],
        hu_window: tuple[float, float],
        roi_size: Sequence[int],
        overlap: float,
        sw_batch_size: int,
        weights: Callable[[], dict[str, Any]],
        trt_precision: str | None = None,
        channels_last: bool = True,
    ):
        super().__init__(
            network_factory=network_factory,
            labels=labels,
            description="Spleen (UNet, MONAI spleen_ct_segmentation)",
            weights=weights,
            trt_precision=trt_precision,
            channels_last=channels_last,
            paths=paths,
        )
        self.pixdim = pixdim
        self.hu_window = hu_window
        self.roi_size = roi_size
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size

    def pre_transforms(self, data=None):
        return [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            CheckCTVolumed(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=self.pixdim, mode="bilinear"),
            ScaleIntensityRanged(
                keys="image", a_min=self.hu_window[0], a_max=self.hu_window[1], b_min=0.0, b_max=1.0, clip=True
            ),
            EnsureTyped(keys="image"),
        ]

    def inferer(self, data=None):
        return SlidingWindowInferer(roi_size=self.roi_size, sw_batch_size=self.sw_batch_size, overlap=self.overlap)

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None):
        return [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=data[PRE_TRANSFORMS_KEY], orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", argmax=True),
            SqueezeDimd(keys="pred", dim=0),
            CastToTyped(keys="pred", dtype=torch.uint8),
        ]
