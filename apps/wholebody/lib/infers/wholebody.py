"""``wholebody``: the 104 structures of the MONAI bundle wholeBody_ct_segmentation."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from lib.conf import as_bool, as_float
from lib.infers.ct_segmentation import PRE_TRANSFORMS_KEY, CTSegmentationTask
from lib.pipelines import wholebody as pipeline


class WholeBodySegmentation(CTSegmentationTask):
    """Pre- and post-processing of the bundle's inference.json, with a memory-bounded inferer.

    The bundle blends 105 float channels over the whole volume, then softmax, argmax and inverts
    the argmax with nearest interpolation. Argmax of the blended logits is the same label (softmax
    is monotonic), so the inferer streams windows in slabs and keeps only uint8 labels.
    """

    def __init__(
        self,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        checkpoints: dict[bool, Sequence[str]],
        pixdim: dict[bool, Sequence[float]],
        roi_size: Sequence[int],
        overlap: float,
        highres: bool,
        weights: Callable[[], dict[str, Any]],
        trt_precision: str | None = None,
    ):
        super().__init__(
            network_factory=network_factory,
            labels=labels,
            description="104 TotalSegmentator structures (SegResNet, MONAI wholeBody_ct_segmentation)",
            weights=weights,
            trt_precision=trt_precision,
            config={"highres": highres, "sw_overlap": overlap},
            paths=[p for paths in checkpoints.values() for p in paths],
        )
        self.checkpoints = checkpoints
        self.pixdim = pixdim
        self.roi_size = roi_size

    def highres(self, data: dict[str, Any]) -> bool:
        return as_bool(data.get("highres", self._config["highres"]), "highres")

    def candidate_paths(self, data):
        return self.checkpoints[self.highres(data)]

    def pre_transforms(self, data=None):
        return pipeline.preprocessing(self.pixdim[self.highres(data)], data.get("device"))

    def inferer(self, data=None):
        return pipeline.inferer(self.roi_size, as_float(data.get("sw_overlap", self._config["sw_overlap"]), "sw_overlap", 0.0, 0.9))

    def inverse_transforms(self, data=None):
        return None  # inverted in post_transforms with Invertd, as the bundle does

    def post_transforms(self, data=None):
        return pipeline.postprocessing(data[PRE_TRANSFORMS_KEY])
