"""StreamingArgmaxInferer: same labels as MONAI's SlidingWindowInferer + argmax, in bounded memory."""

from __future__ import annotations

import ctypes
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval
from monai.networks.nets import SegResNet

# MONAI Label puts the app folder on sys.path and imports its code as `lib`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps" / "wholebody"))
from lib.inferers.streaming_argmax import StreamingArgmaxInferer  # noqa: E402

N_CLASSES = 105  # the bundle's 104 organs + background: many near-equal logits make argmax a sensitive check


def _bundle_like_segresnet(init_filters: int = 8) -> torch.nn.Module:
    """The bundle's architecture, narrower (init_filters 32 -> 8) so CPU tests stay fast."""
    torch.manual_seed(0)
    net = SegResNet(
        spatial_dims=3, in_channels=1, out_channels=N_CLASSES, init_filters=init_filters,
        blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2,
    )
    return net.eval()


def _smooth_volume(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """(1, 1, *shape) smooth random field, closer to CT texture than white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, *shape, generator=g)
    return F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False) * 4


def _reference(x, net, **kw) -> torch.Tensor:
    return torch.argmax(SlidingWindowInferer(**kw)(x, net), dim=1, keepdim=True)


@pytest.mark.parametrize(
    "shape, roi, overlap, sw_batch_size",
    [
        ((40, 50, 70), (32, 32, 32), 0.25, 1),  # nothing is a multiple of the step (24)
        ((20, 45, 64), (32, 32, 32), 0.25, 3),  # x smaller than roi: padded, then cropped back
        ((48, 40, 24), (32, 32, 32), 0.25, 2),  # z (the streamed axis) smaller than roi
        ((30, 30, 45), (24, 32, 16), 0.6, 4),  # anisotropic roi, overlap > 0.5: the carry is longer than a step
    ],
)
def test_parity_with_monai_segresnet(shape, roi, overlap, sw_batch_size):
    net = _bundle_like_segresnet()
    x = _smooth_volume(shape, seed=sum(shape))
    kw = dict(roi_size=roi, overlap=overlap, mode="gaussian", padding_mode="replicate", sw_batch_size=sw_batch_size)
    with torch.inference_mode():
        ref = _reference(x, net, **kw)
        ours = StreamingArgmaxInferer(**kw)(x, net)
    assert ours.shape == (1, 1, *shape) and ours.dtype == torch.uint8
    agreement = (ours.long() == ref).double().mean().item()
    print(f"parity {shape} roi={roi} overlap={overlap} bs={sw_batch_size}: {agreement:.6%}, "
          f"{ref.unique().numel()} classes present")
    assert agreement >= 0.9999


class _LabelFromInput(torch.nn.Module):
    """Logits c = -(v - c)^2 for input value v: argmax is v, whatever the blending weights are.

    Blending sums positive-weighted copies of the same logits at each voxel, so the streamed result must be
    exactly the input's label field; any misplaced window, wrong crop or dropped slice shows up.
    """

    def __init__(self, n_classes: int):
        super().__init__()
        self.register_buffer("c", torch.arange(n_classes, dtype=torch.float32))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return -((x[:, :1] - self.c.view(shape)) ** 2)


def _position_labels(shape: tuple[int, ...], n_classes: int) -> torch.Tensor:
    """(1, 1, *shape) integer labels that vary along every axis."""
    grids = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    lab = sum((k + 3) * g // (k + 2) for k, g in enumerate(grids)) % n_classes
    return lab[None, None].float()


@pytest.mark.parametrize(
    "shape, roi, mode, padding_mode, sw_batch_size",
    [
        ((37, 41, 90), (16, 16, 16), "gaussian", "replicate", 1),
        ((37, 41, 90), (16, 16, 16), "constant", "constant", 5),
        ((10, 70, 13), (16, 24, 16), "gaussian", "constant", 3),  # padded in x and z
        ((50, 23), (16, 16), "gaussian", "replicate", 2),  # 2-D works too
    ],
)
def test_known_labels_exact(shape, roi, mode, padding_mode, sw_batch_size):
    net = _LabelFromInput(N_CLASSES)
    x = _position_labels(shape, N_CLASSES)
    out = StreamingArgmaxInferer(roi, mode=mode, padding_mode=padding_mode, sw_batch_size=sw_batch_size)(x, net)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out.long(), x.long())
    # Batches may cross rows of windows, so the network is called as often as by MONAI.
    size = [max(s, r) for s, r in zip(shape, roi)]
    n_windows = len(dense_patch_slices(size, roi, _get_scan_interval(size, roi, len(roi), [0.25] * len(roi))))
    assert net.calls == math.ceil(n_windows / sw_batch_size)


def test_devices_metatensor_and_inference_mode():
    net = _LabelFromInput(N_CLASSES)
    shape = (30, 20, 50)
    lab = _position_labels(shape, N_CLASSES)
    kw = dict(roi_size=16, sw_batch_size=2, sw_device="cpu", device=torch.device("cpu"))

    # Inputs made in inference mode, used outside it: the labels must be an ordinary tensor the caller can edit.
    with torch.inference_mode():
        x_inf = lab.clone()
    out = StreamingArgmaxInferer(**kw)(x_inf, net)
    assert not out.is_inference()
    out += 0
    assert torch.equal(out.long(), lab.long())

    # Called inside inference mode.
    with torch.inference_mode():
        assert torch.equal(StreamingArgmaxInferer(**kw)(lab, net).long(), lab.long())

    # A network that runs itself in inference mode returns read-only inference tensors: still works.
    class _InferenceModeNet(_LabelFromInput):
        def forward(self, x):
            with torch.inference_mode():
                return super().forward(x)

    out = StreamingArgmaxInferer(**kw)(lab, _InferenceModeNet(N_CLASSES))
    assert torch.equal(out.long(), lab.long())

    # Under grad mode with a network that has parameters: no graph is kept.
    conv = torch.nn.Conv3d(1, 7, 1)
    out = StreamingArgmaxInferer(**kw)(lab, conv)
    assert not out.requires_grad

    # MetaTensor in, MetaTensor out with the input's meta (as MONAI's inferer does).
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0], dtype=torch.float64))
    out = StreamingArgmaxInferer(**kw)(MetaTensor(lab, affine=affine), net)
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8
    assert torch.allclose(out.affine, affine) and torch.equal(out.as_tensor().long(), lab.long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_windows_on_gpu_buffer_on_cpu():
    net = _bundle_like_segresnet()
    x = _smooth_volume((40, 50, 70), seed=3)
    kw = dict(roi_size=32, mode="gaussian", padding_mode="replicate", sw_batch_size=4)
    with torch.inference_mode():
        ref = _reference(x, net.cuda(), sw_device="cuda", device="cpu", **kw)
        ours = StreamingArgmaxInferer(sw_device="cuda", device="cpu", **kw)(x, net)
    assert ours.device.type == "cpu"
    assert (ours.long() == ref).double().mean().item() >= 0.9999


def test_label_dtype_must_hold_all_classes():
    with pytest.raises(ValueError, match="cannot hold"):
        StreamingArgmaxInferer(16)(torch.zeros(1, 1, 16, 16, 16), torch.nn.Conv3d(1, 300, 1))
    out = StreamingArgmaxInferer(16, label_dtype=torch.int16)(torch.zeros(1, 1, 16, 16, 16), torch.nn.Conv3d(1, 300, 1))
    assert out.dtype == torch.int16


# --- memory -------------------------------------------------------------------------------------------------------
# Counter: the process's peak resident set size (VmHWM), reset right before each measured call by writing "5" to
# /proc/self/clear_refs (Linux >= 4.0). tracemalloc cannot see torch's CPU tensors, and the profiler's CPU memory
# events are attributed to ops rather than logged per allocation, while every tensor byte must end up resident
# (torch.zeros and the network write every page). Two things make RSS track live tensor bytes tightly:
#   * mallopt(M_MMAP_THRESHOLD, 256 KiB) pins glibc's threshold (it otherwise grows up to 32 MiB after frees), so
#     every tensor buffer above 256 KiB is its own mmap and goes back to the OS on free, not into a heap that
#     would hide the next phase's allocations;
#   * malloc_trim(0) before each phase returns what the small-object heap can give back.
# This changes malloc for the rest of the process: the test measures in a process of its own.


def _rss_counter():
    try:
        libc = ctypes.CDLL("libc.so.6")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError as e:  # not glibc/Linux, or /proc not writable
        raise RuntimeError(f"no peak-RSS counter here (needs glibc and a writable /proc/self/clear_refs): {e}") from e
    assert libc.mallopt(-3, 256 * 1024) == 1  # M_MMAP_THRESHOLD

    def status_bytes(key: str) -> int:
        with open("/proc/self/status") as fh:
            line = next(line for line in fh if line.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    def peak_extra(fn) -> int:
        """Peak resident bytes fn() needed above what was resident before it (its result is dropped after)."""
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = status_bytes("VmRSS")
        result = fn()
        peak = status_bytes("VmHWM")
        del result
        return peak - before

    return peak_extra


HW, ROI = 64, (32, 32, 32)


def measure_peaks() -> dict[str, int]:
    """Peak extra RSS of ours and of MONAI's inferer + argmax at two volume lengths."""
    peak_extra = _rss_counter()
    net = torch.nn.Conv3d(1, N_CLASSES, 1).eval()  # cheap: the cost under test is the accumulation, not the net
    kw = dict(roi_size=ROI, overlap=0.25, mode="gaussian", padding_mode="replicate", sw_batch_size=1)
    ours, ref = StreamingArgmaxInferer(**kw), SlidingWindowInferer(**kw)
    peaks = {}
    with torch.inference_mode():
        # Warm up lazy allocations (kernels, thread pools, first-use caches) outside the measurement.
        warm = torch.randn(1, 1, HW, HW, 2 * ROI[-1])
        ours(warm, net), ref(warm, net)
        for depth in (128, 256):
            x = torch.randn(1, 1, HW, HW, depth)
            peaks[f"ours{depth}"] = peak_extra(lambda: ours(x, net))
            peaks[f"ref{depth}"] = peak_extra(lambda: torch.argmax(ref(x, net), dim=1, keepdim=True))
            del x
    return peaks


def test_peak_memory_is_the_open_band_not_the_volume():
    # In a fresh process: late in a pytest run, earlier tests' heap and caches add tens of MiB of noise to RSS.
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import {Path(__file__).stem} as t; print(json.dumps(t.measure_peaks()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    peaks = {(k.rstrip("0123456789"), int(k.lstrip("ousref"))): v for k, v in measured.items()}
    hw, roi, mib = HW, ROI, 2**20
    print({k: f"{v / mib:.1f} MiB" for k, v in peaks.items()})

    # The reference holds (1, C, H, W, D) float32: doubling D adds about C*H*W*128*4 bytes (210 MiB here).
    full_growth = N_CLASSES * hw * hw * 128 * 4
    ref_growth = peaks["ref", 256] - peaks["ref", 128]
    ours_growth = peaks["ours", 256] - peaks["ours", 128]
    assert ref_growth > 0.8 * full_growth
    # Ours only grows by the uint8 labels (0.5 MiB here) plus noise, the reference by a full copy.
    # (The bound leaves room for allocator noise on a loaded machine: 55 MiB was seen once.)
    assert ours_growth < 0.35 * ref_growth

    # Bound: the open cells (the z-overlap of two rows of windows over the whole plane, C x H x W x (roi_z - step),
    # plus one row of windows along y, C x H x roi_y x roi_z), 3 windows' worth of logits (the network's output
    # and its workspace), and 24 MiB for the labels, argmax temporaries and allocator noise (measured: 63 MiB
    # of the 102 MiB bound; a whole C x H x W x roi_z slab alone would be 55 MiB).
    step = int(roi[-1] * (1 - 0.25))
    band = N_CLASSES * hw * hw * (roi[-1] - step) * 4 + N_CLASSES * hw * roi[1] * roi[-1] * 4
    window = N_CLASSES * math.prod(roi) * 4
    bound = band + 3 * window + 24 * mib
    assert peaks["ours", 256] < bound, f"{peaks['ours', 256] / mib:.1f} MiB >= bound {bound / mib:.1f} MiB"
