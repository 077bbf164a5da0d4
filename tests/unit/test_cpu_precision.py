"""bfloat16 on the CPU: the same labels as float32 where the logits are confident, fp32 on a CPU without
bfloat16 units, and fp32 for a request that asks for it."""

from __future__ import annotations

import copy
import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import CT
from lib.acceleration import cpu_precision
from lib.acceleration.channels_last import ChannelsLast
from lib.conf import Conf, ConfError
from lib.networks import spleen_unet, wholebody_segresnet

HU_CLASSES = (-500.0, 200.0)  # air and lung | soft tissue and fat | bone


@pytest.fixture
def cpu_flags(monkeypatch, tmp_path):
    """Simulates /proc/cpuinfo with the given flags; the detection is read afresh."""

    def simulate(*flags: str) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {' '.join(flags)}\n")
        monkeypatch.setattr(cpu_precision, "CPUINFO", str(cpuinfo))
        cpu_precision.bf16_units.cache_clear()
        cpu_precision._warn_no_units.cache_clear()

    yield simulate
    cpu_precision.bf16_units.cache_clear()
    cpu_precision._warn_no_units.cache_clear()


def _confident_network(image: torch.Tensor, target: torch.Tensor) -> torch.nn.Module:
    """A small conv net trained on the crop until it classifies its HU ranges with confident logits."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 3, 1))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(80):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(image), target)
        loss.backward()
        optimiser.step()
    return net.eval()


def test_bf16_labels_equal_fp32_labels_where_the_logits_are_confident():
    hu = torch.as_tensor(np.asarray(nib.load(str(CT)).dataobj[30:62, 20:52, 10:18], dtype=np.float32))
    target = torch.bucketize(hu.contiguous(), torch.tensor(HU_CLASSES))[None].long()
    image = (hu / 1000.0)[None, None]
    net = _confident_network(image, target)
    with torch.no_grad():
        fp32 = net(image)
        bf16 = cpu_precision.BFloat16Autocast(ChannelsLast(net))(image)
    assert bf16.dtype == torch.float32, "the wrapped network answers float32, as the fp32 one"
    assert not torch.equal(bf16, fp32), "the convolutions ran in bfloat16"
    top2 = fp32.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 1.0
    assert confident.float().mean() > 0.95, "the trained network is confident on most voxels"
    assert (fp32.argmax(1) == target).float().mean() > 0.95, "and it learned the HU classes"
    assert torch.equal(bf16.argmax(1)[confident], fp32.argmax(1)[confident])


@pytest.mark.parametrize("factory", [wholebody_segresnet, spleen_unet])
def test_the_output_layer_runs_in_float32_so_bf16_logits_are_not_rounded_to_eight_bits(factory):
    torch.manual_seed(0)
    net = factory().eval()
    untouched = copy.deepcopy(net)
    x = torch.randn(1, 1, 32, 32, 32)
    ran = []  # the output dtype of each convolution, in the order they ran
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            module.register_forward_hook(lambda m, args, out: ran.append(out.dtype))
    with torch.inference_mode():
        cpu_precision.BFloat16Autocast(net)  # wrapping again (a later request) adds no second hook
        bf16 = cpu_precision.BFloat16Autocast(net)(x)
        bf16_ran, ran[:] = list(ran), []
        fp32 = net(x)
        assert torch.is_autocast_enabled("cpu") is False, "the hooks leave no autocast behind"
    assert set(bf16_ran[:-1]) == {torch.bfloat16} and bf16_ran[-1] == torch.float32, "only the last convolution in float32"
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, bf16.bfloat16().float()), "logits keep float32's mantissa"
    assert set(ran) == {torch.float32} and torch.equal(fp32, untouched(x)), "an fp32 request on the same network is unchanged"
    assert list(net.state_dict()) == list(untouched.state_dict()), "the checkpoint's keys stay"
    (output,) = [m for m in net.modules() if getattr(m, "_runs_in_float32", False)]
    assert len(output._forward_pre_hooks) == 1


def test_with_decoder_heads_the_base_logits_under_bf16_are_those_it_gives_alone():
    from lib.heads.network import HeadedSegResNet, StructureHead

    torch.manual_seed(0)
    base = wholebody_segresnet().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        alone = cpu_precision.BFloat16Autocast(copy.deepcopy(base))(x)
        head = StructureHead.from_base(wholebody_segresnet, base, 2).eval()
        headed = cpu_precision.BFloat16Autocast(HeadedSegResNet(base, [head]))(x)
    assert headed.shape[1] == 105 + 3
    assert torch.equal(headed[:, :105], alone), "the base's logits do not change with a head beside it"
    assert not torch.equal(headed[:, 105:], headed[:, 105:].bfloat16().float()), "the head's logits are float32 too"


def test_a_cpu_without_bf16_units_serves_fp32_with_one_warning(cpu_flags, caplog):
    cpu_flags("avx512f")
    with caplog.at_level(logging.WARNING, logger=cpu_precision.__name__):
        assert cpu_precision.precision_from_conf(Conf({"cpu_precision": "bf16"})) == "fp32"
        assert cpu_precision.serving("bf16") == "fp32"
    assert len([r for r in caplog.records if "bf16" in r.getMessage()]) == 1
    net = torch.nn.Conv3d(1, 1, 1)
    assert cpu_precision.for_device(net, "cpu", cpu_precision.serving("bf16")) is net


def test_a_cpu_with_bf16_units_serves_bf16_and_fp32_by_default(cpu_flags):
    cpu_flags("amx_bf16")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("PyTorch without oneDNN cannot use bfloat16 units")
    assert cpu_precision.precision_from_conf(Conf({"cpu_precision": "bf16"})) == "bf16"
    assert cpu_precision.precision_from_conf(Conf({})) == "fp32"
    net = torch.nn.Conv3d(1, 1, 1)
    assert isinstance(cpu_precision.for_device(net, "cpu", "bf16"), cpu_precision.BFloat16Autocast)
    assert cpu_precision.for_device(net, "cuda", "bf16") is net, "a GPU runs its own AMP"


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfError, match="cpu_precision"):
        cpu_precision.precision_from_conf(Conf({"cpu_precision": "fp16"}))
    with pytest.raises(ConfError, match="precision"):
        cpu_precision.check("half", "precision")
