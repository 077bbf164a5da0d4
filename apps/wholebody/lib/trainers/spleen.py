"""Training ``spleen`` from the labels users save."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from monai.optimizers import Novograd
from monai.transforms import (
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from lib.trainers.ct_segmentation import CTSegmentationTrainer
from lib.transforms.partial_labels import PartialLabelsd

# The UNet halves the resolution four times: inputs must be divisible by 16 or skip
# connections do not line up ("Sizes of tensors must match" on short volumes).
UNET_DIVISOR = 16


class SpleenSegmentation(CTSegmentationTrainer):
    """The bundle's recipe: DiceCE, Novograd lr 0.002, 96^3 patches."""

    def __init__(
        self,
        model_dir: str,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        paths: Sequence[str],
        pixdim: Sequence[float],
        hu_window: tuple[float, float],
        roi_size: Sequence[int],
        max_epochs: int,
        val_split: float,
    ):
        super().__init__(
            model_dir, network_factory, labels, "Train the spleen UNet on saved labels", max_epochs, val_split, roi_size
        )
        self._paths = paths
        self.pixdim = pixdim
        self.hu_window = hu_window

    def paths(self, request):
        return self._paths

    def optimizer(self, context):
        return Novograd(context.network.parameters(), lr=0.002)

    def _load(self):
        return [
            LoadImaged(keys=("image", "label")),
            EnsureChannelFirstd(keys=("image", "label")),
            Orientationd(keys=("image", "label"), axcodes="RAS"),
            Spacingd(keys=("image", "label"), pixdim=self.pixdim, mode=("bilinear", "nearest"), dtype=(torch.float32, torch.float32)),
            ScaleIntensityRanged(
                keys="image", a_min=self.hu_window[0], a_max=self.hu_window[1], b_min=0.0, b_max=1.0, clip=True
            ),
            EnsureTyped(keys=("image", "label")),
            PartialLabelsd(keys="label", channels=self._channels, num_classes=self.num_classes),
        ]

    def train_pre_transforms(self, context):
        return [*self._load(), *self.random_patches(image_threshold=0.0)]

    def val_pre_transforms(self, context):
        return [*self._load(), DivisiblePadd(keys=("image", "label"), k=UNET_DIVISOR)]
