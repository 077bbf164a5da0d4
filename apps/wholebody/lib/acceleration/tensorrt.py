"""Optional TensorRT engines for the segmentation networks (``--conf trt true``)."""

from __future__ import annotations

import importlib.util
import logging

import torch

from lib.conf import Conf, ConfError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")


def tensorrt_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "polygraphy")) and torch.cuda.is_available()


def accelerate(network: torch.nn.Module, checkpoint: str | None, device: str | torch.device, precision: str) -> torch.nn.Module:
    """Runs ``network`` through a TensorRT engine on a GPU.

    MONAI's ``trt_compile`` builds the engine on the first forward and caches it at
    ``<checkpoint>.plan``, rebuilding it when the checkpoint is newer; with ``fallback`` a failed
    build or an unexpected shape runs PyTorch instead. Without a GPU or without TensorRT the
    network is returned as it is.
    """
    if torch.device(device).type != "cuda":
        return network
    if not tensorrt_available():
        logger.warning("TensorRT requested but tensorrt/polygraphy are not installed: running PyTorch")
        return network
    if not checkpoint:
        logger.warning("TensorRT requested for an untrained model (no checkpoint to cache the engine by): running PyTorch")
        return network
    from monai.networks.trt_compiler import trt_compile

    logger.info(f"TensorRT {precision} engine for {checkpoint} (built on first use, cached as {checkpoint}.plan)")
    return trt_compile(network, checkpoint, args={"precision": precision, "fallback": True})


def precision_from_conf(conf: Conf) -> str | None:
    """``--conf trt true`` and ``--conf trt_precision fp16|fp32``: the engine precision, or None."""
    if not conf.bool("trt", False):
        return None
    precision = (conf.raw("trt_precision") or "fp16").lower()
    if precision not in PRECISIONS:
        raise ConfError(f"'trt_precision' must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision
