"""``wholebody``: the 104 structures of the MONAI bundle wholeBody_ct_segmentation, plus the
structures a site added as decoder heads (lib/heads/)."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch

from lib.conf import ConfError, as_bool, as_float
from lib.heads.merge import OVERLAP_RULES, MergedArgmax
from lib.heads.network import HeadedSegResNet, StructureHead, encoder_fingerprint
from lib.heads.store import HeadStore
from lib.infers.ct_segmentation import PRE_TRANSFORMS_KEY, CTSegmentationTask
from lib.pipelines import wholebody as pipeline
from lib.weights.checkpoints import load_state_dict

logger = logging.getLogger(__name__)

# The request's heads, resolved once in __call__: [{"name", "weights", "structures": {name: value}}] in merge order.
HEADS_KEY = "_heads"


class WholeBodySegmentation(CTSegmentationTask):
    """Pre- and post-processing of the bundle's inference.json, with a memory-bounded inferer.

    The bundle blends 105 float channels over the whole volume, then softmax, argmax and inverts
    the argmax with nearest interpolation. Argmax of the blended logits is the same label (softmax
    is monotonic), so the inferer streams the windows, holds blended logits only where a later window
still adds to them, and keeps only uint8 labels.

    Heads trained on the current encoder (``wholebody_structures``) add their logits to the same
    stream and are merged into the label map (``head_overlap``: ``new`` or ``existing`` wins);
    ``heads: false`` gives the 104-class output alone.
    """

    def __init__(
        self,
        checkpoints: dict[bool, Sequence[str]],
        highres: bool,
        heads: HeadStore,
        head_overlap: str,
        **task_args,
    ):
        """``task_args``: those of ``CTSegmentationTask`` (network, labels, weights, acceleration)."""
        super().__init__(
            description="104 TotalSegmentator structures (SegResNet, MONAI wholeBody_ct_segmentation)",
            # A list shows as a choice in Slicer's options; the first entry is the default.
            config={"highres": highres, "sw_overlap": pipeline.OVERLAP, "heads": True, "head_overlap": _rules_from(head_overlap)},
            paths=[p for paths in checkpoints.values() for p in paths],
            **task_args,
        )
        self.base_labels = dict(self.labels)
        self.checkpoints = checkpoints
        self.head_store = heads
        self._fingerprints: dict[tuple[str | None, float], str] = {}
        self._headed: tuple[tuple, torch.nn.Module] | None = None

    # ------------------------------------------------------------------ heads
    def encoder(self, highres: bool) -> str:
        """Fingerprint of the encoder this resolution runs now (cached per checkpoint file version)."""
        path = self.checkpoint({"highres": highres})
        key = (path, os.stat(path).st_mtime if path else 0.0)
        if key not in self._fingerprints:
            state = load_state_dict(path) if path else self._fresh_network().state_dict()
            self._fingerprints[key] = encoder_fingerprint(state)
        return self._fingerprints[key]

    def heads_info(self) -> list[dict[str, Any]]:
        return [r.describe(self.encoder(r.highres)) for r in self.head_store.heads()]

    def live_heads(self, highres: bool):
        """Heads of this resolution trained on the encoder it runs now; the others are stale."""
        current = self.encoder(highres)
        return [r for r in self.head_store.heads(highres) if r.encoder == current]

    def info(self) -> dict[str, Any]:
        heads = self.heads_info()
        self.labels = {**self.base_labels, **{s: v for h in heads if not h["stale"] for s, v in h["structures"].items()}}
        info = super().info()
        info["heads"] = heads
        return info

    def __call__(self, request, callbacks=None):
        req = {**self._config, **request}
        highres = self.highres(req)
        self.sw_overlap(req)  # every parameter is checked before the image is read
        overlap = _rules_from(req["head_overlap"])[0]
        heads = self.live_heads(highres) if as_bool(req["heads"], "heads") else []
        request = {
            **request,
            "head_overlap": overlap,
            HEADS_KEY: [{"name": r.name, "weights": r.weights, "structures": dict(r.structures)} for r in heads],
        }
        result_file, result_json = super().__call__(request, callbacks)
        result_json["label_names"] = self.result_labels(request)
        result_json["heads"] = [r.name for r in heads]
        return result_file, result_json

    def result_labels(self, data):
        return {**self.base_labels, **{s: v for h in data.get(HEADS_KEY) or [] for s, v in h["structures"].items()}}

    def _get_network(self, device, data):
        heads = data.get(HEADS_KEY) or []
        if not heads:
            return super()._get_network(device, data)
        # TensorRT engines are cached per checkpoint; with heads the network is a different one: PyTorch.
        path = self.checkpoint(data)
        key = (str(device), path, _mtime(path), tuple((h["weights"], _mtime(h["weights"])) for h in heads))
        with self._cache_lock:  # concurrent requests: never another request's network (device, heads)
            if self._headed is None or self._headed[0] != key:
                modules = []
                for head in heads:
                    module = StructureHead(self._network_factory, len(head["structures"]))
                    module.load_state_dict(load_state_dict(head["weights"]), strict=True)
                    modules.append(module)
                network = HeadedSegResNet(self._load_network(path), modules).to(torch.device(device)).eval()
                network = self.in_layout(network, device)
                self._headed = (key, network)
                logger.info(f"wholebody: merging heads {[h['name'] for h in heads]}")
            return self._headed[1]

    def clear_cache(self):
        super().clear_cache()
        self._headed = None

    # ------------------------------------------------------------------ pipeline
    def highres(self, data: dict[str, Any]) -> bool:
        return as_bool(data.get("highres", self._config["highres"]), "highres")

    def candidate_paths(self, data):
        return self.checkpoints[self.highres(data)]

    def pre_transforms(self, data=None):
        return pipeline.preprocessing(pipeline.PIXDIM[self.highres(data)], data.get("device"), body=self.body_mask(data))

    def sw_overlap(self, data: dict[str, Any]) -> float:
        return as_float(data.get("sw_overlap", self._config["sw_overlap"]), "sw_overlap", 0.0, 0.9)

    def inferer(self, data=None):
        overlap = self.sw_overlap(data)
        heads = data.get(HEADS_KEY) or []
        merge = MergedArgmax(len(self.base_labels) + 1, [list(h["structures"].values()) for h in heads], data["head_overlap"]) if heads else None
        return pipeline.inferer(pipeline.ROI_SIZE, overlap, reduce=merge, window_mask=self.window_mask(data))

    def inverse_transforms(self, data=None):
        return None  # inverted in post_transforms with Invertd, as the bundle does

    def post_transforms(self, data=None):
        return pipeline.postprocessing(data[PRE_TRANSFORMS_KEY])


def _rules_from(value: Any) -> list[str]:
    """``head_overlap`` as given (a rule, or Slicer's list with the chosen rule first) -> rules, chosen first."""
    chosen = value[0] if isinstance(value, (list, tuple)) and value else value
    if chosen not in OVERLAP_RULES:
        raise ConfError(f"'head_overlap' must be one of {', '.join(OVERLAP_RULES)}, got {value!r}")
    return [chosen, *[r for r in OVERLAP_RULES if r != chosen]]


def _mtime(path: str | None) -> float:
    return os.stat(path).st_mtime if path and os.path.exists(path) else 0.0
