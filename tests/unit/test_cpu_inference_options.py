"""``cpu_precision``, ``skip_air`` and their request params through the `spleen` and `wholebody` infer tasks:
the answer says what served, a request for fp32 gets fp32, an unknown precision is refused before any work."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from lib.acceleration import cpu_precision
from lib.conf import ConfError


@pytest.fixture
def cpu_with_bf16(monkeypatch, tmp_path):
    """A CPU with bfloat16 units (simulated: CI machines may lack them), and a count of bf16 forwards."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx2 amx_bf16\n")
    monkeypatch.setattr(cpu_precision, "CPUINFO", str(cpuinfo))
    cpu_precision.bf16_units.cache_clear()
    calls = []
    forward = cpu_precision.BFloat16Autocast.forward
    monkeypatch.setattr(cpu_precision.BFloat16Autocast, "forward", lambda self, x: calls.append(x.shape[0]) or forward(self, x))
    yield calls
    cpu_precision.bf16_units.cache_clear()


def body_in_a_corner(path, spacing, shape=(200, 120, 20)) -> str:
    """Air with a body of soft tissue in the first 40 voxels along x: most windows hold no body."""
    hu = np.full(shape, -1000, np.int16)
    hu[:40, 20:100, :] = 40
    nib.save(nib.Nifti1Image(hu, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def spleen_task(tmp_path, **conf):
    from lib.configs.spleen import SpleenSegmentation

    config = SpleenSegmentation()
    config.init("spleen", str(tmp_path / "model"), {"download_weights": "false", **conf}, None)
    return config.infer()


def test_spleen_serves_bf16_by_conf_fp32_on_request_and_skips_air(tmp_path, cpu_with_bf16):
    task = spleen_task(tmp_path, cpu_precision="bf16", skip_air="true")
    assert task.info()["cpu_precision"] == "bf16"
    image = body_in_a_corner(tmp_path / "ct.nii.gz", (1.5, 1.5, 2.0))
    request = {"image": image, "device": "cpu", "result_extension": ".nii.gz"}

    _, answer = task(request)
    assert answer["precision"] == "bf16" and cpu_with_bf16, "the conf's bf16 ran"
    # 96^3 windows, overlap 0.5: 4 along x (the body, with its margin, is in the first only), 2 along y, 1 along z
    assert answer["windows"] == {"run": 2, "skipped": 6}

    cpu_with_bf16.clear()
    _, answer = task({**request, "precision": "fp32", "skip_air": False})
    assert answer["precision"] == "fp32" and not cpu_with_bf16, "a request for fp32 gets fp32"
    assert answer["windows"] == {"run": 8, "skipped": 0}

    with pytest.raises(ConfError, match="'precision'"):
        task({**request, "image": str(tmp_path / "never-read.nii.gz"), "precision": "fp16"})


def test_a_cpu_without_units_serves_fp32_even_when_asked_for_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_precision, "bf16_units", lambda: False)
    task = spleen_task(tmp_path, cpu_precision="bf16")
    assert task.info()["cpu_precision"] == "fp32"
    assert task.precision({"precision": "bf16"}) == "fp32"


def test_wholebody_serves_bf16_by_default_and_skips_air_windows(tmp_path, cpu_with_bf16):
    from lib.configs.wholebody import WholeBodySegmentation

    config = WholeBodySegmentation()
    config.init("wholebody", str(tmp_path / "model"), {"download_weights": "false", "highres": "false"}, None)
    task = config.infer()
    assert task.info()["cpu_precision"] == "bf16", "the default chosen from the confident checkpoint's figures (docs/performance.md)"
    image = body_in_a_corner(tmp_path / "ct.nii.gz", (3.0, 3.0, 3.0))
    _, answer = task({"image": image, "device": "cpu", "result_extension": ".nii.gz", "skip_air": True})
    # 96^3 windows, overlap 0.25: x starts 0, 72, 104 (the body in the first only), y 0 and 24, z one
    assert answer["precision"] == "bf16" and cpu_with_bf16 == [1, 1], "the two windows with body ran in bf16"
    assert answer["windows"] == {"run": 2, "skipped": 4}
    _, answer = task({"image": image, "device": "cpu", "result_extension": ".nii.gz", "precision": "fp32"})
    assert answer["precision"] == "fp32" and cpu_with_bf16 == [1, 1], "a request for fp32 gets fp32"


def test_wholebody_serves_fp32_by_default_on_a_cpu_without_units_or_when_the_conf_says_so(tmp_path, monkeypatch):
    from lib.configs.wholebody import WholeBodySegmentation

    for units, conf, expected in ((False, {}, "fp32"), (True, {"cpu_precision": "fp32"}, "fp32")):
        monkeypatch.setattr(cpu_precision, "bf16_units", lambda units=units: units)
        config = WholeBodySegmentation()
        config.init("wholebody", str(tmp_path / "model"), {"download_weights": "false", **conf}, None)
        assert config.infer().info()["cpu_precision"] == expected, (units, conf)
    spleen = spleen_task(tmp_path)
    assert spleen.info()["cpu_precision"] == "fp32", "spleen keeps fp32: its agreement was not measured"


def test_vista3d_serves_the_conf_precision_per_request_and_refuses_an_unknown_one(tmp_path, cpu_with_bf16):
    from lib.configs.vista3d import Vista3D

    config = Vista3D()
    config.init("vista3d", str(tmp_path / "model"), {"download_weights": "false", "cpu_precision": "bf16"}, None)
    for name, task in config.infer().items():
        assert task.info()["cpu_precision"] == "bf16", name
        assert task._config["precision"] == ["bf16", "fp32"], "Slicer's choice: the default first"
        with pytest.raises(ConfError, match="'precision'"):  # refused before the weights or the image are needed
            task({"image": str(tmp_path / "never-read.nii.gz"), "precision": "fp16"})
