"""Training ``wholebody`` from the labels users save."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from monai.transforms import AsDiscreted

from lib.pipelines import wholebody as pipeline
from lib.trainers.ct_segmentation import CTSegmentationTrainer
from lib.trainers.distributed import TorchrunLaunch
from lib.trainers.params import boolean


class WholeBodySegmentation(CTSegmentationTrainer):
    """The bundle's training recipe (DiceCE, AdamW 1e-4, 96^3 patches, AMP on GPU) with a loss
    that tolerates partial labels. ``highres`` picks the 1.5 mm or the 3 mm model to train.
    Images are preprocessed as inference does (lib/pipelines/wholebody.py), and validation segments
    as inference does."""

    request_params = {**CTSegmentationTrainer.request_params, "highres": boolean}

    def __init__(
        self,
        model_dir: str,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        checkpoints: dict[bool, Sequence[str]],
        highres: bool,
        max_epochs: int,
        val_split: float,
        torchrun: TorchrunLaunch | None = None,
    ):
        super().__init__(
            model_dir,
            network_factory,
            labels,
            "Train the 104-structure SegResNet on saved labels",
            max_epochs,
            val_split,
            pipeline.ROI_SIZE,
            torchrun,
        )
        self._config["highres"] = highres
        self.checkpoints = checkpoints
        self._highres = highres

    def __call__(self, request, datastore):
        request = self.checked_params({**self._config, **request})
        self._highres = request["highres"]
        return super().__call__({**request, "name": self.run_name()}, datastore)

    def run_name(self) -> str:
        """The run's folder under this trainer's model_dir: one per resolution, each resumes its own."""
        return f"train_{'highres' if self._highres else 'lowres'}"

    def paths(self, request):
        return self.checkpoints[self._highres]

    def optimizer(self, context):
        return torch.optim.AdamW(context.network.parameters(), lr=1e-4, weight_decay=1e-5)

    def _preprocessing(self) -> list:
        return [*pipeline.preprocessing(pipeline.PIXDIM[self._highres], label_key="label"), self.partial_labels()]

    def train_pre_transforms(self, context):
        # Replicate padding, as the inferer pads windows.
        return [*self._preprocessing(), *self.random_patches(image_threshold=-1.0, image_pad_mode="replicate")]

    def val_pre_transforms(self, context):
        return self._preprocessing()

    def val_inferer(self, context):
        return pipeline.inferer(pipeline.ROI_SIZE, pipeline.OVERLAP)

    def val_post_transforms(self, context):
        # The inferer answers labels, as inference does (argmax of the blended logits).
        return [AsDiscreted(keys="pred", to_onehot=self.num_classes), self.label_onehot()]
