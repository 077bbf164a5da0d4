"""Training ``spleen`` from the labels users save."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from monai.optimizers import Novograd

from lib.pipelines import spleen as pipeline
from lib.trainers.ct_segmentation import CTSegmentationTrainer
from lib.trainers.distributed import TorchrunLaunch


class SpleenSegmentation(CTSegmentationTrainer):
    """The bundle's recipe: DiceCE, Novograd lr 0.002, 96^3 patches. Images are preprocessed as
    inference does (lib/pipelines/spleen.py), and validation segments as inference does."""

    def __init__(
        self,
        model_dir: str,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        paths: Sequence[str],
        max_epochs: int,
        val_split: float,
        torchrun: TorchrunLaunch | None = None,
    ):
        super().__init__(
            model_dir,
            network_factory,
            labels,
            "Train the spleen UNet on saved labels",
            max_epochs,
            val_split,
            pipeline.ROI_SIZE,
            torchrun,
        )
        self._paths = paths

    def paths(self, request):
        return self._paths

    def optimizer(self, context):
        return Novograd(context.network.parameters(), lr=0.002)

    def _preprocessing(self) -> list:
        return [*pipeline.preprocessing(label_key="label"), self.partial_labels()]

    def train_pre_transforms(self, context):
        return [*self._preprocessing(), *self.random_patches(image_threshold=0.0)]

    def val_pre_transforms(self, context):
        return self._preprocessing()

    def val_inferer(self, context):
        return pipeline.inferer()
