"""What the CT segmentation trainers share: data from saved labels, partial labels, random patches, publishing."""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import torch
from monai.handlers import MeanDice, from_engine
from monai.transforms import AsDiscreted, RandCropByPosNegLabeld, SpatialPadd
from monailabel.tasks.train.basic_train import Context

from lib.datastore.datalist import labeled_items
from lib.labels.names import NameResolver
from lib.labels.saved import Segment
from lib.trainers.distributed import TorchrunLaunch
from lib.trainers.partial_label_loss import PartialLabelDiceCELoss
from lib.trainers.per_class_dice import PerClassDice
from lib.trainers.publishing import PublishingTrainTask
from lib.transforms.partial_labels import LayersToMultiHotd, PartialLabelsd
from lib.versions.publishing import publish_version
from lib.weights.checkpoints import load_state_dict

logger = logging.getLogger(__name__)


class CTSegmentationTrainer(PublishingTrainTask):
    def __init__(
        self,
        model_dir: str,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        description: str,
        max_epochs: int,
        val_split: float,
        roi_size: Sequence[int],
        torchrun: TorchrunLaunch | None = None,
    ):
        super().__init__(
            model_dir,
            description,
            config={"max_epochs": max_epochs, "val_split": val_split},
            torchrun=torchrun,
            load_strict=True,
            labels=labels,
            tracking=None,
        )
        self._network_factory = network_factory
        self._channels = labels
        self.num_classes = max(labels.values()) + 1
        self.roi_size = roi_size

    def paths(self, request: dict) -> Sequence[str]:
        """Official checkpoint, then the one trained here (published to)."""
        raise NotImplementedError

    def __call__(self, request, datastore):
        official, trained = self.paths(request)
        self._publish_to = trained
        self._version, self._published_mtime = None, 0.0  # this run's model version, made when it first publishes
        self._trainer_name = str(request.get("model") or self.description)
        self._start_from = trained if os.path.exists(trained) else official
        return super().__call__(request, datastore)

    def partial_labels(self) -> PartialLabelsd:
        """A saved label's values -> this model's channels, by segment name (label handling after the
        preprocessing the model shares with inference)."""
        return PartialLabelsd(keys="label", channels=self._channels, num_classes=self.num_classes)

    def random_patches(self, image_threshold: float, image_pad_mode: str = "constant") -> list:
        """Pads short volumes (a few slices) to a full patch, then samples one patch, half of the
        time centred on a labelled voxel."""
        return [
            SpatialPadd(keys=("image", "label"), spatial_size=self.roi_size, mode=(image_pad_mode, "constant")),
            RandCropByPosNegLabeld(
                keys=("image", "label"),
                label_key="label",
                spatial_size=self.roi_size,
                pos=1,
                neg=1,
                num_samples=1,
                image_key="image",
                image_threshold=image_threshold,
            ),
        ]

    def network(self, context: Context):
        # Seeded like the infer task's untrained network, so training from scratch starts from the
        # model the annotator has been correcting.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return self._network_factory()

    def loss_function(self, context: Context):
        return PartialLabelDiceCELoss()

    def load_path(self, output_dir, pretrained=True):
        return self._start_from if pretrained and os.path.exists(self._start_from) else None

    def pre_process(self, request, datastore):
        """Saved labels with their image ids and segments (``PartialLabelsd`` maps them to channels)."""
        return labeled_items(datastore, os.path.join(self._model_dir, "layered_labels"))

    def map_segments(self, segments: list[Segment]) -> dict[str, dict | None]:
        """What each segment of a saved label trains in this model: {structure, channel} or None."""
        return NameResolver(self._channels).mapping(segments)

    def partition_datalist(self, context: Context, shuffle=False):
        train, val = super().partition_datalist(context, shuffle)
        # With one saved label, validating on it beats no validation (and no best checkpoint).
        return train, (val or train)

    def train_key_metric(self, context: Context):
        return {"train_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]), include_background=False)}

    def train_post_transforms(self, context: Context):
        return [AsDiscreted(keys="pred", argmax=True, to_onehot=self.num_classes), self.label_onehot()]

    def label_onehot(self):
        """The label as one channel per class, for the Dice metrics (overlapping segments: several layers)."""
        return LayersToMultiHotd(keys="label", num_classes=self.num_classes)

    def val_post_transforms(self, context: Context):
        return self.train_post_transforms(context)

    def val_handlers(self, context: Context):
        # MONAI Label's are rank 0's alone; every rank adds its Dice sums.
        return [*(super().val_handlers(context) or []), PerClassDice(self._channels)]

    def _publish(self, context: Context) -> str | None:
        """The run's best checkpoint as its model version (lib/versions/), served unless a version is pinned."""
        best = os.path.join(context.output_dir, self._key_metric_filename)
        if not os.path.exists(best) or os.path.getmtime(best) <= self._published_mtime:
            return None
        self._published_mtime = os.path.getmtime(best)
        number = publish_version(self._publish_to, self._version, load_state_dict(best), context, self._trainer_name, self._studies)
        self._version = number
        logger.info(f"Published {best} -> {self._publish_to} as version {number}")
        return self._publish_to
