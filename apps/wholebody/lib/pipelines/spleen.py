"""The spleen pipeline of the MONAI bundle spleen_ct_segmentation (its inference.json), as plain MONAI
pieces: inference and training (with its label, ``label_key``) build their preprocessing from
``preprocessing``, and validation infers with ``inferer`` as inference does."""

from __future__ import annotations

import torch
from monai.transforms import EnsureChannelFirstd, EnsureTyped, LoadImaged, MapTransform, Orientationd, ScaleIntensityRanged

from lib.inferers.masked_sliding_window import MaskedSlidingWindowInferer
from lib.pipelines.spacing import image_and_label, resampling
from lib.transforms.validate import CheckCTVolumed

PIXDIM = (1.5, 1.5, 2.0)
HU_WINDOW = (-57.0, 164.0)
ROI_SIZE = (96, 96, 96)
OVERLAP = 0.5
SW_BATCH_SIZE = 4
OUT_CHANNELS = 2  # background, spleen


def preprocessing(label_key: str | None = None, body: MapTransform | None = None) -> list:
    """``body``: a transform that reads the resampled image in HU, before the HU window (the body mask)."""
    keys = image_and_label(label_key)
    return [
        LoadImaged(keys=keys),
        EnsureChannelFirstd(keys=keys),
        CheckCTVolumed(keys="image"),
        Orientationd(keys=keys, axcodes="RAS"),
        *resampling(PIXDIM, label_key),
        *([body] if body is not None else []),
        ScaleIntensityRanged(keys="image", a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys=keys),
    ]


def inferer(window_mask: torch.Tensor | None = None) -> MaskedSlidingWindowInferer:
    """The bundle's sliding window (``window_mask``: windows without a voxel of it are not run)."""
    return MaskedSlidingWindowInferer(
        roi_size=ROI_SIZE, sw_batch_size=SW_BATCH_SIZE, overlap=OVERLAP, out_channels=OUT_CHANNELS, window_mask=window_mask
    )
