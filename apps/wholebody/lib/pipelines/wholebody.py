"""The wholebody pipeline as plain MONAI pieces, apart from MONAI Label and file I/O, so benchmarks and
tests run it on tensors and on machines without the server stack. Inference and training (with its
label, ``label_key``) build their preprocessing from ``preprocessing``, and validation infers as
inference does."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    SqueezeDimd,
)

from lib.acceleration.cpu_memory import reusing_freed_memory
from lib.inferers.streaming_argmax import StreamingArgmaxInferer
from lib.pipelines.spacing import image_and_label, resampling
from lib.transforms.validate import CheckCTVolumed

# The bundle's inference.json: highres (True) 1.5 mm model.pt, lowres 3 mm model_lowres.pt.
PIXDIM = {True: (1.5, 1.5, 1.5), False: (3.0, 3.0, 3.0)}
ROI_SIZE = (96, 96, 96)
OVERLAP = 0.25
# On a CPU with bfloat16 units (elsewhere fp32): on the confident checkpoint every structure of >= 1 ml kept
# Dice >= 0.99 against fp32 at 1.9 to 2.8x the speed (docs/performance.md, issue 22).
CPU_PRECISION = "bf16"


def preprocessing(
    pixdim: Sequence[float], device: torch.device | str | None = None, label_key: str | None = None, body: MapTransform | None = None
) -> list:
    """The bundle's preprocessing; on a GPU the volume moves there first, so resampling and
    normalisation run on the device too. ``label_key``: a label resampled with the image (training).
    ``body``: a transform that reads the resampled image in HU, before normalisation (the body mask)."""
    keys = image_and_label(label_key)
    return [
        LoadImaged(keys=keys),
        EnsureTyped(keys=keys, device=device, track_meta=True),
        EnsureChannelFirstd(keys=keys),
        CheckCTVolumed(keys="image"),
        Orientationd(keys=keys, axcodes="RAS"),
        # Resampled in float64, Spacingd's default and the bundle's: in float32 a random-weight
        # model's near-tied logits flip on 3 % of voxels at 1.5 mm (measured on the shared CT).
        # Inverted on the labels by index: MONAI's result without its full-size float grid.
        *resampling(pixdim, label_key),
        *([body] if body is not None else []),
        NormalizeIntensityd(keys="image", nonzero=True),
        ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0),
    ]


def inferer(roi_size: Sequence[int], overlap: float, reduce=None, window_mask: torch.Tensor | None = None) -> StreamingArgmaxInferer:
    """Argmax of gaussian-blended logits, as the bundle's softmax + argmax, streamed
    (``reduce``: another way to turn finished logits into labels, e.g. merging decoder heads;
    ``window_mask``: windows without a voxel of it are not run)."""
    return StreamingArgmaxInferer(
        roi_size=roi_size, overlap=overlap, mode="gaussian", padding_mode="replicate", reduce=reduce, window_mask=window_mask
    )


def postprocessing(pre: Compose) -> list:
    """Labels back to the input's geometry with nearest interpolation, as the bundle's Invertd."""
    return [
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True),
        SqueezeDimd(keys="pred", dim=0),
        CastToTyped(keys="pred", dtype=torch.uint8),
    ]


def segment(path: str, network: torch.nn.Module, pixdim, roi_size, overlap, device) -> torch.Tensor:
    """The whole pipeline on one file: (X, Y, Z) uint8 labels in the input's geometry."""
    with reusing_freed_memory():
        pre = Compose(preprocessing(pixdim, device))
        data = pre({"image": path})
        with torch.inference_mode(), torch.autocast("cuda", enabled=torch.device(device).type == "cuda"):
            labels = inferer(roi_size, overlap)(data["image"][None], network)
        data["pred"] = labels[0].clone()
        return Compose(postprocessing(pre))(data)["pred"]
