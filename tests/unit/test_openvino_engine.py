"""``--conf cpu_engine openvino``: the network converted to OpenVINO gives PyTorch's labels where the logits are
confident (f32 and bf16), is converted once per loaded network, serves through the infer tasks and the answer
says so; without the package the server serves PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cpu_inference_options import body_in_a_corner, spleen_task
from test_cpu_precision import confident_crop

from lib.acceleration import openvino_cpu

pytest.importorskip("openvino", reason="openvino is a pinned dependency; the fallback without it is tested in test_cpu_inference_options")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_labels_equal_pytorch_fp32_where_the_logits_are_confident(precision):
    net, image, target = confident_crop()
    with torch.no_grad():
        fp32 = net(image)
    served = openvino_cpu.for_network(net, precision)(image)
    assert served.dtype == torch.float32 and served.shape == fp32.shape
    top2 = fp32.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 1.0
    assert confident.float().mean() > 0.95
    assert torch.equal(served.argmax(1)[confident], fp32.argmax(1)[confident])
    if precision == "fp32":
        torch.testing.assert_close(served, fp32, atol=1e-4, rtol=1e-4)


def test_a_network_is_converted_once_and_compiled_per_shape_and_precision(monkeypatch):
    net, image, _ = confident_crop()
    conversions = []
    convert = openvino_cpu.OpenVINONetwork.__init__
    monkeypatch.setattr(openvino_cpu.OpenVINONetwork, "__init__", lambda self, n: conversions.append(n) or convert(self, n))
    first = openvino_cpu.for_network(net, "fp32")
    first(image)
    first(image[..., :4])
    openvino_cpu.for_network(net, "bf16")(image)
    assert conversions == [net], "one conversion per network"
    assert len(first.engine._compiled) == 3, "compiled per input shape and precision"


def test_spleen_serves_through_openvino_and_the_answer_says_so(tmp_path):
    image = body_in_a_corner(tmp_path / "ct.nii.gz", (1.5, 1.5, 2.0))
    request = {"image": image, "device": "cpu", "result_extension": ".nii.gz", "precision": "fp32"}
    task = spleen_task(tmp_path, cpu_engine="openvino", skip_air="true")
    assert task.info()["cpu_engine"] == "openvino"
    result, answer = task(request)
    assert (answer["engine"], answer["precision"]) == ("openvino", "fp32")
    assert answer["windows"] == {"run": 2, "skipped": 6}, "air windows are skipped as with PyTorch"

    torch_result, torch_answer = spleen_task(tmp_path / "torch", skip_air="true")(request)
    assert torch_answer["engine"] == "torch"
    import nibabel as nib

    ours, theirs = (np.asarray(nib.load(f).dataobj) for f in (result, torch_result))
    # Random weights: near-tied logits may flip with the summation order; nearly every voxel agrees.
    assert (ours == theirs).mean() > 0.999
