"""Config of ``wholebody``: the constants its infer and train tasks share."""

from __future__ import annotations

import os

from monailabel.interfaces.config import TaskConfig

import lib.infers.wholebody
import lib.trainers.wholebody
from lib.conf import Conf
from lib.labels import wholebody_labels
from lib.networks import wholebody_segresnet
from lib.official_checkpoint import OfficialCheckpoint
from lib.tensorrt import precision_from_conf
from lib.pipelines.wholebody import OVERLAP, PIXDIM, ROI_SIZE


class WholeBodySegmentation(TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        options = Conf(conf)
        self.labels = wholebody_labels()
        self.highres = options.bool("highres", True)
        self.max_epochs = options.int("max_epochs", 50, minimum=1)
        self.val_split = options.float("val_split", 0.2, low=0.0, high=0.9)
        self.trt_precision = precision_from_conf(options)
        self.checkpoints = {
            True: OfficialCheckpoint("wholebody_highres", model_dir, options, os.path.join(model_dir, f"{name}_highres.pt")),
            False: OfficialCheckpoint("wholebody_lowres", model_dir, options, os.path.join(model_dir, f"{name}_lowres.pt")),
        }
        for checkpoint in self.checkpoints.values():
            checkpoint.fetch_in_background()

    def weights(self):
        return {("highres" if res else "lowres"): c.status() for res, c in self.checkpoints.items()}

    def infer(self):
        return lib.infers.wholebody.WholeBodySegmentation(
            network_factory=wholebody_segresnet,
            labels=self.labels,
            checkpoints={res: c.paths for res, c in self.checkpoints.items()},
            pixdim=PIXDIM,
            roi_size=ROI_SIZE,
            overlap=OVERLAP,
            highres=self.highres,
            weights=self.weights,
            trt_precision=self.trt_precision,
        )

    def trainer(self):
        return lib.trainers.wholebody.WholeBodySegmentation(
            model_dir=os.path.join(self.model_dir, "train", self.name),
            network_factory=wholebody_segresnet,
            labels=self.labels,
            checkpoints={res: c.paths for res, c in self.checkpoints.items()},
            pixdim=PIXDIM,
            roi_size=ROI_SIZE,
            highres=self.highres,
            max_epochs=self.max_epochs,
            val_split=self.val_split,
        )
