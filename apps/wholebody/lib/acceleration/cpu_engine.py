"""Which engine runs the CT segmentation networks on a CPU (``--conf cpu_engine torch|openvino``).

``torch``: PyTorch's own oneDNN path (channels-last, bfloat16 autocast; lib/acceleration/cpu_precision.py).
``openvino``: the same network converted to OpenVINO (lib/acceleration/openvino_cpu.py), in the same precision.
A GPU always runs PyTorch (AMP or TensorRT).
"""

from __future__ import annotations

import functools
import logging

import torch

from lib.acceleration import cpu_precision, openvino_cpu
from lib.conf import Conf, ConfError

logger = logging.getLogger(__name__)

ENGINES = ("torch", "openvino")
DEFAULT = "torch"  # --conf cpu_engine's default (docs/performance.md says why)


def serving(engine: str) -> str:
    """The engine that serves when ``engine`` is asked for: OpenVINO only where it is installed."""
    if engine == "openvino" and not openvino_cpu.available():
        _warn_missing()
        return "torch"
    return engine


@functools.cache
def _warn_missing() -> None:
    logger.warning("cpu_engine openvino asked for, but the openvino package is not installed: serving with PyTorch")


def engine_from_conf(conf: Conf) -> str:
    engine = (conf.raw("cpu_engine") or DEFAULT).strip().lower()
    if engine not in ENGINES:
        raise ConfError(f"'cpu_engine' must be one of {', '.join(ENGINES)}, got {conf.raw('cpu_engine')!r}")
    return serving(engine)


def for_device(network: torch.nn.Module, device: str | torch.device, precision: str, engine: str) -> torch.nn.Module:
    """``network`` as it serves on ``device``: on a CPU by ``engine`` in ``precision``."""
    if engine == "openvino" and torch.device(device).type == "cpu":
        return openvino_cpu.for_network(network, precision)
    return cpu_precision.for_device(network, device, precision)


def served(device: str | torch.device, engine: str) -> str:
    """What an answer names as the engine that ran."""
    return engine if torch.device(device).type == "cpu" else "torch"
