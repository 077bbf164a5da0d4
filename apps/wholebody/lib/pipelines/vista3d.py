"""The VISTA3D preprocessing of the MONAI bundle vista3d (its ``inference.json``; its ``VistaPreTransformd``
only rewrites prompts, done by ``lib.vista3d.prompts``), with the app's check that the input is a CT.
The infer tasks and finetuning (with its label, ``label_key``) build their preprocessing from it."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.transforms import (
    CastToTyped,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
)

from lib.pipelines.spacing import image_and_label, resampling
from lib.transforms.validate import CheckCTVolumed


def preprocessing(
    pixdim: Sequence[float], hu_window: Sequence[float], margin: int, device: Any = None, label_key: str | None = None
) -> list:
    keys = image_and_label(label_key)
    return [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        CheckCTVolumed(keys="image"),
        EnsureTyped(keys=keys, device=device, track_meta=True),
        *resampling(pixdim, label_key),  # labels inverted by index
        CropForegroundd(keys=keys, source_key="image", margin=margin, allow_smaller=True),
        ScaleIntensityRanged(keys="image", a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        Orientationd(keys=keys, axcodes="RAS"),
        CastToTyped(keys=keys, dtype=(torch.float32, torch.uint8)[: len(keys)]),
    ]
