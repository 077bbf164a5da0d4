"""What the CT segmentation tasks share: checkpoint choice, network cache, AMP, CPU precision, air windows, inversion."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Sequence

import torch
from monai.transforms import Compose
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.acceleration import channels_last, cpu_precision
from lib.acceleration.cpu_memory import reusing_freed_memory
from lib.acceleration.tensorrt import accelerate
from lib.conf import as_bool
from lib.measurements import on_image as measurements
from lib.transforms.body_mask import BODY_MASK_KEY, BodyMaskd
from lib.weights.checkpoints import load_state_dict

logger = logging.getLogger(__name__)

# The pre-transforms of a request, kept so Invertd can undo exactly those instances.
PRE_TRANSFORMS_KEY = "_pre_transforms"


class CTSegmentationTask(BasicInferTask):
    """Base of ``wholebody`` and ``spleen``.

    ``weights`` reports, per candidate checkpoint set, whether official or trained weights exist,
    so ``/info/`` can say plainly when a model is untrained.

    On the CPU the network runs in ``precision`` (``fp32``, or ``bf16`` where the CPU has the units;
    lib/acceleration/cpu_precision.py), and with ``skip_air`` windows holding no body voxel are not run
    (lib/transforms/body_mask.py); both are request params too, and the answer says what served.
    """

    def __init__(
        self,
        network_factory: Callable[[], torch.nn.Module],
        labels: dict[str, int],
        description: str,
        weights: Callable[[], dict[str, Any]],
        config: dict[str, Any] | None = None,
        paths: Sequence[str] = (),
        trt_precision: str | None = None,
        channels_last: bool = True,
        precision: str = "fp32",
        skip_air: bool = False,
        body: BodyMaskd | None = None,
    ):
        """``precision``: the served default after the CPU check; ``body``: the body mask's rule for ``skip_air``."""
        super().__init__(
            path=list(paths),
            network=network_factory(),
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=description,
            # A list shows as a choice in Slicer's options; the first entry is the default.
            config={
                "result_dtype": "uint8",
                "precision": cpu_precision.choices(precision),
                "skip_air": skip_air,
                measurements.OPTION: True,
                **(config or {}),
            },
        )
        self._weights = weights
        self._network_factory = network_factory
        self._trt_precision = trt_precision
        self._channels_last = channels_last
        self._body = body or BodyMaskd()
        self._cache: dict[tuple[str, str | None], tuple[torch.nn.Module, float]] = {}
        self._cache_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        info = super().info()
        weights = self._weights()
        info["weights"] = weights
        info["cpu_precision"] = self._config["precision"][0]
        info["untrained"] = all(w["untrained"] for w in weights.values())
        if info["untrained"]:
            info["description"] += " [UNTRAINED: no weights found, see 'weights']"
        return info

    def precision(self, data: dict[str, Any]) -> str:
        """The precision serving this request on the CPU (``precision`` param: Slicer's list or a value)."""
        return cpu_precision.requested(data, self._config["precision"])

    def skips_air(self, data: dict[str, Any]) -> bool:
        return as_bool(data.get("skip_air", self._config["skip_air"]), "skip_air")

    def body_mask(self, data: dict[str, Any]) -> BodyMaskd | None:
        """The pre-transform that adds the body mask, for a request that skips air windows."""
        return self._body if self.skips_air(data) else None

    def window_mask(self, data: dict[str, Any]) -> torch.Tensor | None:
        """``(1, 1, *spatial)`` for the inferer, or None (``skip_air`` off)."""
        mask = data.get(BODY_MASK_KEY)
        return None if mask is None else torch.as_tensor(mask)[None]

    def candidate_paths(self, data: dict[str, Any]) -> Sequence[str]:
        """Checkpoints for this request, most preferred last (a trained model beats the official one)."""
        return self.path

    def checkpoint(self, data: dict[str, Any]) -> str | None:
        for path in reversed(self.candidate_paths(data)):
            if path and os.path.exists(path):
                return path
        return None

    def _get_network(self, device, data):
        path = self.checkpoint(data)
        mtime = os.stat(path).st_mtime if path else 0.0
        with self._cache_lock:  # concurrent requests (one inference worker per GPU) load a checkpoint once
            cached = self._cache.get((str(device), path))
            if cached and cached[1] == mtime:
                return cached[0]

            network = self.in_layout(self._load_network(path).to(torch.device(device)).eval(), device)
            if self._trt_precision:
                network = accelerate(network, path, device, self._trt_precision)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != str(device)}
            self._cache[(str(device), path)] = (network, mtime)
            return network

    def in_layout(self, network: torch.nn.Module, device) -> torch.nn.Module:
        return channels_last.for_device(network, device, self._channels_last)

    def _load_network(self, path: str | None) -> torch.nn.Module:
        """The network with the checkpoint's weights (seeded untrained weights without one), on the CPU."""
        network = self._fresh_network()
        if path:
            logger.info(f"Loading {path}")
            network.load_state_dict(load_state_dict(path, map_location="cpu"), strict=True)
        else:
            logger.warning(f"{self.description}: no checkpoint found, running untrained weights")
        return network

    def _fresh_network(self) -> torch.nn.Module:
        # Untrained weights are seeded so that inference without a checkpoint is reproducible.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return self._network_factory()

    def clear_cache(self):
        self._cache.clear()

    def __call__(self, request, callbacks=None):
        req = {**self._config, **request}
        request = {**request, "precision": self.precision(req)}  # checked (422) before the image is read
        self.skips_air(req)
        as_bool(request.get(measurements.OPTION, True), measurements.OPTION)  # checked before the image is read
        # One request is one block of reused CPU memory: pre, infer and post; handed back once it is answered.
        with reusing_freed_memory():
            result_file, result_json = super().__call__(request, callbacks)
        return result_file, measurements.report_latency(result_json)

    def result_labels(self, data: dict[str, Any]) -> dict[str, int]:
        """Name -> value of the labels this request's result may hold."""
        return dict(self.labels)

    def writer(self, data, extension=None, dtype=None):
        result_file, result_json = super().writer(data, extension, dtype)
        return result_file, measurements.add_measurements(result_json, data, self.result_labels(data), self.output_label_key)

    def run_pre_transforms(self, data, transforms):
        data = super().run_pre_transforms(data, transforms)
        data[PRE_TRANSFORMS_KEY] = Compose(transforms)
        return data

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        precision = data["precision"]
        # bf16 wraps the cached network per request: it shares the weights, so no copy per precision.
        network = cpu_precision.for_device(self._get_network(device, data), device, precision)
        inputs = torch.as_tensor(data[self.input_key])[None].to(torch.device(device))
        inferer = self.inferer(data)
        with torch.inference_mode(), torch.autocast("cuda", enabled=str(device).startswith("cuda")):
            outputs = inferer(inputs, network)
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        windows = inferer.windows
        served = precision if torch.device(device).type == "cpu" else "amp"
        logger.info(f"{self.description}: {served} on {device}, windows run {windows['run']}, skipped {windows['skipped']}")
        data[self.output_json_key] = {"precision": served, "windows": dict(windows)}
        data.pop(BODY_MASK_KEY, None)
        # A clone outside inference mode, so the inverse transforms may modify it.
        data[self.output_label_key] = outputs[0].clone()
        return data
