"""Config of ``spleen``: what its infer and train tasks share (the pipeline's constants are lib/pipelines/spleen.py's)."""

from __future__ import annotations

import os

from monailabel.interfaces.config import TaskConfig

import lib.infers.spleen
import lib.trainers.spleen
from lib.acceleration import cpu_precision
from lib.acceleration.tensorrt import precision_from_conf
from lib.conf import Conf
from lib.configs.distributed_training import torchrun_launch
from lib.labels import SPLEEN_LABELS
from lib.networks import spleen_unet
from lib.transforms import body_mask
from lib.weights.official import OfficialCheckpoint


class SpleenSegmentation(TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        options = Conf(conf)
        self.labels = SPLEEN_LABELS
        self.max_epochs = options.int("max_epochs", 50, minimum=1)
        self.val_split = options.float("val_split", 0.2, low=0.0, high=0.9)
        self.trt_precision = precision_from_conf(options)
        self.channels_last = options.bool("channels_last", True)
        self.cpu_precision = cpu_precision.precision_from_conf(options)
        self.skip_air, self.body = body_mask.from_conf(options)
        self.torchrun = torchrun_launch(name, options)
        self.checkpoint = OfficialCheckpoint("spleen", model_dir, options, os.path.join(model_dir, f"{name}.pt"))
        self.checkpoint.fetch_in_background()

    def weights(self):
        return {"default": self.checkpoint.status()}

    def infer(self):
        return lib.infers.spleen.SpleenSegmentation(
            network_factory=spleen_unet,
            labels=self.labels,
            paths=self.checkpoint.paths,
            weights=self.weights,
            trt_precision=self.trt_precision,
            channels_last=self.channels_last,
            precision=self.cpu_precision,
            skip_air=self.skip_air,
            body=self.body,
        )

    def trainer(self):
        return lib.trainers.spleen.SpleenSegmentation(
            model_dir=os.path.join(self.model_dir, "train", self.name),
            network_factory=spleen_unet,
            labels=self.labels,
            paths=self.checkpoint.paths,
            max_epochs=self.max_epochs,
            val_split=self.val_split,
            torchrun=self.torchrun,
        )
