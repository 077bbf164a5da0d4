"""The official bundles' inference, rebuilt from their inference.json with MONAI transforms.

Tests compare the app against these; nothing here is imported by the app.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)


def wholebody_preprocessing(pixdim: float) -> Compose:
    return Compose(
        [
            LoadImaged(keys="image"),
            EnsureTyped(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=[pixdim] * 3, mode="bilinear"),
            NormalizeIntensityd(keys="image", nonzero=True),
            ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0),
        ]
    )


def spleen_preprocessing() -> Compose:
    return Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=[1.5, 1.5, 2.0], mode="bilinear"),
            ScaleIntensityRanged(keys="image", a_min=-57, a_max=164, b_min=0, b_max=1, clip=True),
            EnsureTyped(keys="image"),
        ]
    )


def run(path: str, network: torch.nn.Module, pre: Compose, inferer, post: list) -> np.ndarray:
    data = pre({"image": path})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].float(), network.eval())[0]
    data = Compose(post)(data)
    return np.asarray(data["pred"]).squeeze().astype(np.int64)


def wholebody(path: str, network: torch.nn.Module, pixdim: float) -> np.ndarray:
    pre = wholebody_preprocessing(pixdim)
    inferer = SlidingWindowInferer(roi_size=[96, 96, 96], sw_batch_size=1, overlap=0.25, padding_mode="replicate", mode="gaussian")
    post = [
        Activationsd(keys="pred", softmax=True),
        AsDiscreted(keys="pred", argmax=True),
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True),
    ]
    return run(path, network, pre, inferer, post)


def spleen_logits(path: str, network: torch.nn.Module) -> torch.Tensor:
    data = spleen_preprocessing()({"image": path})
    with torch.no_grad():
        return SlidingWindowInferer(roi_size=[96, 96, 96], sw_batch_size=4, overlap=0.5)(data["image"][None].float(), network.eval())


def spleen(path: str, network: torch.nn.Module) -> np.ndarray:
    pre = spleen_preprocessing()
    inferer = SlidingWindowInferer(roi_size=[96, 96, 96], sw_batch_size=4, overlap=0.5)
    post = [
        Activationsd(keys="pred", softmax=True),
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
    ]
    return run(path, network, pre, inferer, post)
