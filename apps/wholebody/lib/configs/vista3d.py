"""Config of ``vista3d``: two infer tasks (``vista3d`` automatic, ``vista3d_point`` clicks) sharing one
network and its caches, and the finetuning trainer; the constants all three use."""

from __future__ import annotations

import os

from monai.networks.nets import vista3d132
from monailabel.interfaces.config import TaskConfig

import lib.infers.vista3d
import lib.infers.vista3d_point
import lib.trainers.vista3d
from lib.acceleration import cpu_precision
from lib.conf import Conf, ConfError
from lib.infers.vista3d import parse_label_prompt
from lib.vista3d.classes import LearnedClasses
from lib.vista3d.prompts import PromptError, resolve_prompts
from lib.vista3d.runtime import Vista3DRuntime
from lib.weights.official import OfficialCheckpoint

# The bundle's inference.json / train.json.
SPACING = 1.5
HU_WINDOW = (-963.8247715525971, 1053.678477684517)
CROP_MARGIN = 10
ROI_SIZE = (128, 128, 128)
SW_OVERLAP = 0.25  # the bundle's SlidingWindowInfererAdapt default (inference.json's 0.3 is not passed on)
DEFAULT_LABEL_PROMPT = "everything"
CLASSES_FILE = "vista3d_classes.json"


def vista3d_network():
    return vista3d132(in_channels=1)


class Vista3D(TaskConfig):
    def init(self, name, model_dir, conf, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        options = Conf(conf)
        spacing = options.float("vista3d_spacing", SPACING, low=0.1, high=10.0)
        self.pixdim = (spacing, spacing, spacing)
        self.max_epochs = options.int("max_epochs", 50, minimum=1)
        self.val_split = options.float("val_split", 0.2, low=0.0, high=0.9)
        self.label_prompt = options.raw("vista3d_label_prompt", DEFAULT_LABEL_PROMPT)
        self.cpu_precision = cpu_precision.precision_from_conf(options)
        self.classes_path = os.path.join(model_dir, CLASSES_FILE)
        try:
            resolve_prompts(parse_label_prompt(self.label_prompt), None, None, (1, 1, 1), LearnedClasses(self.classes_path).get())
        except PromptError as e:
            raise ConfError(f"--conf vista3d_label_prompt: {e}") from None
        self.checkpoint = OfficialCheckpoint("vista3d", model_dir, options, os.path.join(model_dir, f"{name}.pt"))
        self.checkpoint.fetch_in_background()
        self.runtime = Vista3DRuntime(
            checkpoint=self.checkpoint,
            classes_path=self.classes_path,
            network_factory=vista3d_network,
            pixdim=self.pixdim,
            hu_window=HU_WINDOW,
            crop_margin=CROP_MARGIN,
            roi_size=ROI_SIZE,
            cache_bytes=options.int("vista3d_cache_mb", 2048, minimum=0) * 1024**2,
            image_cache_bytes=options.int("vista3d_image_cache_mb", 512, minimum=0) * 1024**2,
            window_grid=self._window_grid(options),
        )

    @staticmethod
    def _window_grid(options: Conf) -> int:
        grid = options.int("vista3d_window_grid", ROI_SIZE[0] // 2, minimum=0)
        if 2 * grid > min(ROI_SIZE):
            raise ConfError(f"'vista3d_window_grid' must be 0..{min(ROI_SIZE) // 2}, got {grid}")
        return grid

    def infer(self):
        return {
            self.name: lib.infers.vista3d.Vista3DSegmentation(self.runtime, self.label_prompt, SW_OVERLAP, self.cpu_precision),
            f"{self.name}_point": lib.infers.vista3d_point.Vista3DPoint(self.runtime, self.cpu_precision),
        }

    def trainer(self):
        return lib.trainers.vista3d.Vista3DTrainer(
            model_dir=os.path.join(self.model_dir, "train", self.name),
            network_factory=vista3d_network,
            checkpoint=self.checkpoint,
            classes_path=self.classes_path,
            pixdim=self.pixdim,
            hu_window=HU_WINDOW,
            crop_margin=CROP_MARGIN,
            roi_size=ROI_SIZE,
            overlap=SW_OVERLAP,
            max_epochs=self.max_epochs,
            val_split=self.val_split,
        )
