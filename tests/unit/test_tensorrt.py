"""The TensorRT option: parsed once, a clean fallback to PyTorch where it cannot run."""

from __future__ import annotations

import pytest
import torch

from lib.acceleration.tensorrt import accelerate, precision_from_conf, tensorrt_available
from lib.conf import Conf, ConfError
from lib.networks import wholebody_segresnet
from lib.pipelines import wholebody as pipeline


def test_precision_option():
    assert precision_from_conf(Conf({})) is None
    assert precision_from_conf(Conf({"trt": "true"})) == "fp16"
    assert precision_from_conf(Conf({"trt": "true", "trt_precision": "FP32"})) == "fp32"
    with pytest.raises(ConfError, match="trt_precision"):
        precision_from_conf(Conf({"trt": "true", "trt_precision": "int4"}))
    with pytest.raises(ConfError, match="'trt'"):
        precision_from_conf(Conf({"trt": "maybe"}))


def test_cpu_runs_pytorch_unchanged(tmp_path):
    network = torch.nn.Conv3d(1, 2, 1)
    checkpoint = tmp_path / "model.pt"
    torch.save(network.state_dict(), checkpoint)
    assert accelerate(network, str(checkpoint), "cpu", "fp16") is network
    assert not (tmp_path / "model.pt.plan").exists()


def test_fp16_engine_agrees_with_fp32_pytorch(tmp_path):
    if not tensorrt_available():
        pytest.skip("needs a CUDA GPU with tensorrt and polygraphy installed")
    torch.manual_seed(0)
    network = wholebody_segresnet().cuda().eval()
    checkpoint = tmp_path / "model.pt"
    torch.save(network.state_dict(), checkpoint)
    x = torch.randn(1, 1, 96, 96, 160, device="cuda")
    inferer = pipeline.inferer(pipeline.ROI_SIZE, pipeline.OVERLAP)
    with torch.inference_mode():
        reference = inferer(x, network)
        engine = accelerate(wholebody_segresnet().cuda().eval().requires_grad_(False), str(checkpoint), "cuda", "fp16")
        engine.load_state_dict(network.state_dict())
        ours = inferer(x, engine)
    assert (tmp_path / "model.pt.plan").exists()
    assert (ours == reference).float().mean() >= 0.995
