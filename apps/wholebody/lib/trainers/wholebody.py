"""Training ``wholebody`` from the labels users save."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    Spacingd,
)

from lib.conf import as_bool
from lib.trainers.ct_segmentation import CTSegmentationTrainer
from lib.transforms.partial_labels import PartialLabelsd


class WholeBodySegmentation(CTSegmentationTrainer):
    """The bundle's training recipe (DiceCE, AdamW 1e-4, 96^3 patches, AMP on GPU) with a loss
    that tolerates partial labels. ``highres`` picks the 1.5 mm or the 3 mm model to train."""

    def __init__(
        self,
        model_dir: str,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        checkpoints: dict[bool, Sequence[str]],
        pixdim: dict[bool, Sequence[float]],
        roi_size: Sequence[int],
        highres: bool,
        max_epochs: int,
        val_split: float,
    ):
        super().__init__(
            model_dir,
            network_factory,
            labels,
            "Train the 104-structure SegResNet on saved labels",
            max_epochs,
            val_split,
            roi_size,
        )
        self._config["highres"] = highres
        self.checkpoints = checkpoints
        self.pixdim = pixdim
        self._highres = highres

    def __call__(self, request, datastore):
        self._highres = as_bool(request.get("highres", self._config["highres"]), "highres")
        request = {**request, "name": self.run_name()}
        return super().__call__(request, datastore)

    def run_name(self) -> str:
        """The run's folder under this trainer's model_dir: one per resolution, each resumes its own."""
        return f"train_{'highres' if self._highres else 'lowres'}"

    def paths(self, request):
        return self.checkpoints[self._highres]

    def optimizer(self, context):
        return torch.optim.AdamW(context.network.parameters(), lr=1e-4, weight_decay=1e-5)

    def _load(self):
        return [
            LoadImaged(keys=("image", "label")),
            EnsureChannelFirstd(keys=("image", "label")),
            EnsureTyped(keys=("image", "label")),
            Orientationd(keys=("image", "label"), axcodes="RAS"),
            Spacingd(
                keys=("image", "label"),
                pixdim=self.pixdim[self._highres],
                mode=("bilinear", "nearest"),
                dtype=(torch.float32, torch.float32),
            ),
            NormalizeIntensityd(keys="image", nonzero=True),
            ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0),
            PartialLabelsd(keys="label", channels=self._channels, num_classes=self.num_classes),
        ]

    def train_pre_transforms(self, context):
        # Replicate padding, as the inferer pads windows.
        return [*self._load(), *self.random_patches(image_threshold=-1.0, image_pad_mode="replicate")]

    def val_pre_transforms(self, context):
        return self._load()
