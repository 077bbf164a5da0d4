"""Sliding-window inference that streams the argmax, so the class dimension never exists at full volume size.

MONAI's ``SlidingWindowInferer`` keeps ``(1, C, H, W, D)`` blended logits plus a count map for the whole
volume; at C=105 a whole-body CT needs tens of GB just for that. Here the volume is cut into cells by every
window border (along each axis, the intervals between consecutive window starts and ends), so each cell is
covered by one fixed set of windows. Windows run in order of their start along the last axis (D), then as
MONAI lists them. A cell's weighted logit sum exists only from the first window that covers it to the last:
then its argmax goes into the ``uint8`` output and the sum is freed. What is held at any time is the band of
cells that a processed window touched and a later one still covers: about the overlap of two rows of
windows, not the volume and not a whole slab of ``roi_z`` slices.

Window positions, padding and blending weights come from MONAI 1.4.0's own helpers (the same calls that
``monai.inferers.utils.sliding_window_inference`` makes), so per-window contributions are bit-identical to MONAI's.
Two steps are left out because they do not change the argmax:
  * division by the count map: it is a positive per-voxel scale;
  * softmax: it is monotonic per voxel.
The only source of disagreement is float summation order (MONAI adds windows in x-major order, we add them
in z-major order), which can flip a label only where two classes are tied to within float rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import Inferer
from monai.inferers.utils import _get_scan_interval
from monai.utils import (
    BlendMode,
    PytorchPadMode,
    convert_to_dst_type,
    ensure_tuple_rep,
    fall_back_tuple,
    look_up_option,
)

__all__ = ["StreamingArgmaxInferer"]


class StreamingArgmaxInferer(Inferer):
    """Memory-bounded ``argmax(SlidingWindowInferer(...)(x, net), dim=1, keepdim=True)``.

    Args mean the same as in :class:`monai.inferers.SlidingWindowInferer`, plus:
        label_dtype: dtype of the returned labels (must hold ``C - 1``; uint8 covers the 105-class bundle).
        reduce: maps finished blended logits ``(C, *spatial[:-1], n)`` to labels ``(*spatial[:-1], n)``; the
            default is the argmax over C. Decoder heads use it to merge several argmaxes into one label map.
        window_mask: ``(N, 1, *spatial)`` bool, or None: windows holding no True voxel of it are not run
            (lib/transforms/body_mask.py). Logits are summed, never divided by a count, so a window not run adds
            nothing: a voxel keeps exactly its labels wherever every window covering it runs (every mask voxel),
            and a voxel that only skipped windows cover is labelled 0 (background) without ``reduce``.
            ``windows`` then counts the windows ``run`` and ``skipped`` by the last call.

    Memory (besides the input and the labels): on ``device`` the weighted logit sums of the open cells, in
    ``inputs.dtype`` (for windows moving along z: at most the C x H' x W' x (roi_z - step_z) overlap carried to the
    next row of windows plus C x H' x (roi_y) x roi_z of the row being filled; H', W' = padded in-plane size),
    plus one network output of ``sw_batch_size x C x roi`` on ``sw_device`` (weighted in place; copied to
    ``device`` if that differs). Peak memory does not depend on D.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        overlap: Sequence[float] | float = 0.25,
        mode: BlendMode | str = BlendMode.GAUSSIAN,
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.REPLICATE,
        cval: float = 0.0,
        sw_batch_size: int = 1,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        label_dtype: torch.dtype = torch.uint8,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        window_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        self.roi_size = roi_size
        self.overlap = overlap
        self.mode = look_up_option(mode, BlendMode)
        self.sigma_scale = sigma_scale
        self.padding_mode = look_up_option(padding_mode, PytorchPadMode)
        self.cval = cval
        self.sw_batch_size = sw_batch_size
        self.sw_device = sw_device
        self.device = device
        self.label_dtype = label_dtype
        self.reduce = reduce
        self.window_mask = window_mask
        self.windows = {"run": 0, "skipped": 0}

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """inputs: ``(N, C_in, *spatial)``; network maps ``(n, C_in, *roi)`` -> ``(n, C, *roi)`` logits.

        Returns ``(N, 1, *spatial)`` labels of ``label_dtype`` on ``device`` (a MetaTensor with the input's meta
        if the input was one, like MONAI's inferer).
        """
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        # No autograd: the argmax is not differentiable, and a graph through the accumulation would hold every
        # window's output alive. no_grad (not inference_mode) so the labels stay ordinary tensors for callers
        # outside inference mode; inside a caller's inference_mode this still runs as inference.
        if self.window_mask is not None and (self.window_mask.shape[0] != x.shape[0] or self.window_mask.shape[2:] != x.shape[2:]):
            raise ValueError(f"window_mask must be (N, 1, *spatial) of the inputs {tuple(x.shape)}, got {tuple(self.window_mask.shape)}.")
        self.windows = {"run": 0, "skipped": 0}
        with torch.no_grad():
            labels = [self._infer_one(x[b : b + 1], network, args, kwargs, b) for b in range(x.shape[0])]
        out = labels[0] if len(labels) == 1 else torch.cat(labels)
        if meta is not None:
            out = convert_to_dst_type(out, meta, dtype=self.label_dtype, device=out.device)[0]
        return out

    def _infer_one(self, img: torch.Tensor, network: Callable, args: tuple, kwargs: dict, b: int) -> torch.Tensor:
        """img: ``(1, C_in, *spatial)`` -> ``(1, 1, *spatial)`` labels."""
        nd = img.ndim - 2
        device = torch.device(self.device) if self.device is not None else img.device
        sw_device = torch.device(self.sw_device) if self.sw_device is not None else img.device
        compute_dtype = img.dtype  # MONAI blends (and stores) in the input's dtype
        orig_size = tuple(img.shape[2:])
        roi = tuple(fall_back_tuple(self.roi_size, orig_size))
        overlap = ensure_tuple_rep(self.overlap, nd)
        if any(o < 0 or o >= 1 for o in overlap):
            raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}.")

        pad = roi_padding(orig_size, roi)
        if any(pad):
            img = F.pad(img, pad=pad, mode=self.padding_mode, value=self.cval)
        size = tuple(img.shape[2:])  # == max(orig_size, roi) per axis, MONAI's `image_size`

        slices = dense_patch_slices(size, roi, _get_scan_interval(size, roi, nd, overlap))
        # compute_importance_map already clamps to max(min weight, 1e-3), as MONAI's inferer uses it.
        weight = compute_importance_map(roi, self.mode, self.sigma_scale, device=sw_device, dtype=compute_dtype)
        weight = weight.to(device=sw_device, dtype=compute_dtype)[None, None]  # (1, 1, *roi)

        # Visit windows in order of their start on the last axis (stable, so dense_patch_slices' x/y order is
        # kept inside a row). Batches may cross rows, so the network is called as often as in MONAI.
        slices = sorted(slices, key=lambda s: s[-1].start)
        n_windows = len(slices)
        if self.window_mask is not None:
            mask = self.window_mask[b : b + 1].to(torch.bool)
            if any(pad):  # padded voxels are copies of border voxels: they hold no body of their own
                mask = F.pad(mask.to(torch.uint8), pad=pad).to(torch.bool)
            slices = [s for s in slices if mask[(0, 0, *s)].any()]
        self.windows["run"] += len(slices)
        self.windows["skipped"] += n_windows - len(slices)
        cells = _Cells(slices, size)
        # Zeros: voxels that no window covers (all their windows skipped) are background.
        labels = torch.zeros((1, 1, *size), dtype=self.label_dtype, device=device)
        sums: dict[tuple[int, ...], torch.Tensor] = {}  # open cell -> (C, *cell) weighted logit sum

        for i in range(0, len(slices), self.sw_batch_size):
            chunk = slices[i : i + self.sw_batch_size]
            # cat copies, so the network never gets a view of the caller's input.
            win_data = torch.cat([img[(slice(None), slice(None), *s)] for s in chunk]).to(sw_device)
            seg = network(win_data, *args, **kwargs)
            if not isinstance(seg, torch.Tensor) or seg.shape[2:] != roi or seg.shape[0] != len(chunk):
                got = getattr(seg, "shape", type(seg))
                raise ValueError(f"network must return one (n, C, *{roi}) tensor for n windows, got {got}.")
            if i == 0 and self.reduce is None:
                self._check_classes(seg.shape[1])
            # Same arithmetic as MONAI: weight in place, in the logits' dtype, move to `device`, then `out += p`
            # in the input's dtype. In place because a fresh window-sized product costs an allocation and its
            # page faults per window (MONAI does it in place too); win_data is our own copy, so even an identity
            # network is safe.
            if seg.is_inference() and not torch.is_inference_mode_enabled():
                seg = (seg * weight).to(seg.dtype)  # a network that made inference tensors: those are read-only
            else:
                seg *= weight
            seg = seg.to(device)
            for w, p in enumerate(seg, start=i):  # p: (C, *roi)
                for cell, in_window, in_volume in cells.of_window[w]:
                    part = p[(slice(None), *in_window)]
                    if cell in sums:
                        sums[cell] += part
                    else:  # the first window's contribution, as MONAI's 0 + p
                        sums[cell] = _copy_in_layout(part, compute_dtype)
                    if cells.last[cell] == w:  # no later window covers it: final
                        finished = sums.pop(cell)
                        # argmax returns the first maximum, as torch.argmax on MONAI's output does.
                        reduced = torch.argmax(finished, dim=0) if self.reduce is None else self.reduce(finished)
                        labels[(0, 0, *in_volume)] = reduced
                        del finished, reduced
            del p, part, seg, win_data  # p would keep this batch's logits alive through the next network call
        assert not sums, "every cell is finished by its last window"

        if any(pad):  # crop back to the input size (MONAI's final_slicing with zoom 1)
            crop = [slice(pad[2 * (nd - 1 - k)], pad[2 * (nd - 1 - k)] + orig_size[k]) for k in range(nd)]
            labels = labels[(slice(None), slice(None), *crop)].contiguous()
        return labels

    def _check_classes(self, n_classes: int) -> None:
        if not self.label_dtype.is_floating_point and n_classes - 1 > torch.iinfo(self.label_dtype).max:
            raise ValueError(f"label_dtype {self.label_dtype} cannot hold {n_classes} classes.")


def roi_padding(size: Sequence[int], roi: Sequence[int]) -> list[int]:
    """MONAI's padding of an image smaller than the window (half before, half after), as ``F.pad`` takes it:
    the last axis first."""
    pad: list[int] = []
    for k in range(len(size) - 1, -1, -1):
        diff = max(roi[k] - size[k], 0)
        pad += [diff // 2, diff - diff // 2]
    return pad


class _Cells:
    """The cells that window borders cut a volume into, which windows cover each, and where.

    ``of_window[w]``: for window ``w`` (in visiting order), ``(cell, slices in the window, slices in the volume)``
    per cell it covers; ``last[cell]``: the last window covering the cell, after which its sum is final.
    """

    def __init__(self, windows: Sequence[tuple[slice, ...]], size: Sequence[int]):
        nd = len(size)
        # per axis: the sorted borders of all windows, and the intervals between consecutive borders
        borders = [sorted({b for s in windows for b in (s[k].start, s[k].stop)}) for k in range(nd)]
        self.of_window: list[list[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]] = []
        self.last: dict[tuple[int, ...], int] = {}
        for w, window in enumerate(windows):
            per_axis = []
            for k in range(nd):
                lo, hi = window[k].start, window[k].stop
                first = borders[k].index(lo)
                per_axis.append([(j, borders[k][j], borders[k][j + 1]) for j in range(first, borders[k].index(hi))])
            covered = []
            for combo in itertools.product(*per_axis):
                cell = tuple(j for j, _, _ in combo)
                in_window = tuple(slice(a - s.start, b - s.start) for (_, a, b), s in zip(combo, window))
                in_volume = tuple(slice(a, b) for _, a, b in combo)
                covered.append((cell, in_window, in_volume))
                self.last[cell] = w
            self.of_window.append(covered)



def _copy_in_layout(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A dense copy of a window's slice with its dimensions in the window's memory order, so that the copy
    and every later ``+=`` stream through memory (a channels-last network output copied into a
    channels-first sum would be a transpose per window)."""
    order = sorted(range(part.ndim), key=lambda d: -part.stride(d))
    inverse = sorted(range(part.ndim), key=lambda d: order[d])
    return part.permute(order).to(dtype=dtype, copy=True).contiguous().permute(inverse)
