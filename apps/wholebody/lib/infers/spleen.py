"""``spleen``: the UNet of the MONAI bundle spleen_ct_segmentation."""

from __future__ import annotations

import torch
from monai.transforms import Activationsd, AsDiscreted, CastToTyped, Invertd, SqueezeDimd

from lib.infers.ct_segmentation import PRE_TRANSFORMS_KEY, CTSegmentationTask
from lib.pipelines import spleen as pipeline


class SpleenSegmentation(CTSegmentationTask):
    """The bundle's pipeline (lib/pipelines/spleen.py). It inverts softmax probabilities with bilinear
    interpolation before the argmax, unlike wholebody; two channels are cheap enough to keep that exact."""

    def __init__(self, **task_args):
        """``task_args``: those of ``CTSegmentationTask`` (network, labels, checkpoints, weights, acceleration)."""
        super().__init__(description="Spleen (UNet, MONAI spleen_ct_segmentation)", **task_args)

    def pre_transforms(self, data=None):
        return pipeline.preprocessing(body=self.body_mask(data))

    def inferer(self, data=None):
        return pipeline.inferer(self.window_mask(data))

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
