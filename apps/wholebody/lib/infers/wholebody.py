"""``wholebody``: the 104 structures of the MONAI bundle wholeBody_ct_segmentation."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from monai.transforms import (
    CastToTyped,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    Spacingd,
    SqueezeDimd,
)

from lib.conf import as_bool
from lib.inferers.streaming_argmax import StreamingArgmaxInferer
from lib.infers.ct_segmentation import PRE_TRANSFORMS_KEY, CTSegmentationTask
from lib.transforms.validate import CheckCTVolumed


class WholeBodySegmentation(CTSegmentationTask):
    """Pre- and post-processing of the bundle's inference.json, with a memory-bounded inferer.

    The bundle blends 105 float channels over the whole volume, then softmax, argmax and inverts
    the argmax with nearest interpolation. Argmax of the blended logits is the same label (softmax
    is monotonic), so the inferer streams windows in slabs and keeps only uint8 labels.
    """

    def __init__(
        self,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        checkpoints: dict[bool, Sequence[str]],
        pixdim: dict[bool, Sequence[float]],
        roi_size: Sequence[int],
        overlap: float,
        highres: bool,
        weights: Callable[[], dict[str, Any]],
    ):
        super().__init__(
            network_factory=network_factory,
            labels=labels,
            description="104 TotalSegmentator structures (SegResNet, MONAI wholeBody_ct_segmentation)",
            weights=weights,
            config={"highres": highres, "sw_overlap": overlap},
            paths=[p for paths in checkpoints.values() for p in paths],
        )
        self.checkpoints = checkpoints
        self.pixdim = pixdim
        self.roi_size = roi_size

    def highres(self, data: dict[str, Any]) -> bool:
        return as_bool(data.get("highres", self._config["highres"]), "highres")

    def candidate_paths(self, data):
        return self.checkpoints[self.highres(data)]

    def pre_transforms(self, data=None):
        return [
            LoadImaged(keys="image"),
            EnsureTyped(keys="image"),
            EnsureChannelFirstd(keys="image"),
            CheckCTVolumed(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            # float32 rather than Spacingd's float64 default: half the memory, same labels.
            Spacingd(keys="image", pixdim=self.pixdim[self.highres(data)], mode="bilinear", dtype=torch.float32),
            NormalizeIntensityd(keys="image", nonzero=True),
            ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0),
        ]

    def inferer(self, data=None):
        return StreamingArgmaxInferer(
            roi_size=self.roi_size,
            overlap=float(data.get("sw_overlap", self._config["sw_overlap"])),
            mode="gaussian",
            padding_mode="replicate",
        )

    def inverse_transforms(self, data=None):
        return None  # inverted in post_transforms with Invertd, as the bundle does

    def post_transforms(self, data=None):
        return [
            Invertd(
                keys="pred",
                transform=data[PRE_TRANSFORMS_KEY],
                orig_keys="image",
                nearest_interp=True,
                to_tensor=True,
            ),
            SqueezeDimd(keys="pred", dim=0),
            CastToTyped(keys="pred", dtype=torch.uint8),
        ]
