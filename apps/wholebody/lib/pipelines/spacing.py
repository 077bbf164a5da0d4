"""Resampling to a model's voxel size, the step every pipeline here shares, with or without a label.

Inference resamples the image alone; training adds its label (``label_key``), checked to lie on the
image's voxel grid and then resampled by the same transform instance, so it lands on the very grid the
image does. The image is resampled exactly as inference does, whatever the label: bilinear in float64
(see lib/pipelines/wholebody.py for why float64).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lib.transforms.index_inversion import IndexInvertibleSpacingd
from lib.transforms.label_grid import LabelOnImageGridd


def image_and_label(label_key: str | None) -> tuple[str, ...]:
    """The keys a pipeline's shared steps apply to."""
    return ("image",) if label_key is None else ("image", label_key)


def resampling(pixdim: Sequence[float], label_key: str | None = None) -> list:
    if label_key is None:
        return [IndexInvertibleSpacingd(keys="image", pixdim=pixdim, mode="bilinear")]
    return [
        LabelOnImageGridd(label_key),
        # Nearest keeps a label's integer values; float32 holds them exactly in half the memory of float64.
        IndexInvertibleSpacingd(
            keys=("image", label_key), pixdim=pixdim, mode=("bilinear", "nearest"), dtype=(np.float64, torch.float32)
        ),
    ]
