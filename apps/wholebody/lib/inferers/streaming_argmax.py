"""Sliding-window inference that streams the argmax, so the class dimension never exists at full volume size.

MONAI's ``SlidingWindowInferer`` keeps ``(1, C, H, W, D)`` blended logits plus a count map for the whole
volume; at C=105 a whole-body CT needs tens of GB just for that. Here windows run slab by slab along the last
spatial axis (D). A slab buffer of ``roi_z`` slices holds the partial weighted sums for the z-range that is still
open; once every window covering a slice is done, that slice's argmax goes into the ``uint8`` output and the
buffer slides forward (the still-open overlap is moved to its front, the rest zeroed).

Window positions, padding and blending weights come from MONAI 1.4.0's own helpers (the same calls that
``monai.inferers.utils.sliding_window_inference`` makes), so per-window contributions are bit-identical to MONAI's.
Two steps are left out because they do not change the argmax:
  * division by the count map: it is a positive per-voxel scale;
  * softmax: it is monotonic per voxel.
The only source of disagreement is float summation order (MONAI adds windows in x-major order, we add them
in z-major order), which can flip a label only where two classes are tied to within float rounding.
"""

from __future__ import annotations

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

    Memory (besides the input and the labels): on ``device`` a slab buffer of ``C x H' x W' x roi_z`` values of
    ``inputs.dtype`` (H', W' = padded in-plane size), plus an int64 argmax temporary of at most ``H' x W' x roi_z``; on
    ``sw_device`` one network output of ``sw_batch_size x C x roi`` (weighted in place; copied to ``device`` if
    that differs). Peak memory does not depend on D.
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
        with torch.no_grad():
            labels = [self._infer_one(x[b : b + 1], network, args, kwargs) for b in range(x.shape[0])]
        out = labels[0] if len(labels) == 1 else torch.cat(labels)
        if meta is not None:
            out = convert_to_dst_type(out, meta, dtype=self.label_dtype, device=out.device)[0]
        return out

    def _infer_one(self, img: torch.Tensor, network: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
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

        # Same padding as MONAI when the image is smaller than roi: F.pad lists the last axis first.
        pad: list[int] = []
        for k in range(nd - 1, -1, -1):
            diff = max(roi[k] - orig_size[k], 0)
            pad += [diff // 2, diff - diff // 2]
        if any(pad):
            img = F.pad(img, pad=pad, mode=self.padding_mode, value=self.cval)
        size = tuple(img.shape[2:])  # == max(orig_size, roi) per axis, MONAI's `image_size`

        slices = dense_patch_slices(size, roi, _get_scan_interval(size, roi, nd, overlap))
        # compute_importance_map already clamps to max(min weight, 1e-3), as MONAI's inferer uses it.
        weight = compute_importance_map(roi, self.mode, self.sigma_scale, device=sw_device, dtype=compute_dtype)
        weight = weight.to(device=sw_device, dtype=compute_dtype)[None, None]  # (1, 1, *roi)

        # Visit windows in order of their start on the last axis (stable, so dense_patch_slices' x/y order is
        # kept inside a slab). Batches may cross slab borders, so the network is called as often as in MONAI.
        slices = sorted(slices, key=lambda s: s[-1].start)
        rz, depth = roi[-1], size[-1]
        labels = torch.empty((1, 1, *size), dtype=self.label_dtype, device=device)
        # (C, *size[:-1], rz): blended logits of slices [z_open, z_open + rz), zero where no window wrote yet.
        # Every window added starts at z_open, so it lands in buf[..., 0:rz] with one add whose rows are whole
        # and contiguous (a wrapping ring buffer would split it in two, which measured ~2x slower).
        buf: torch.Tensor | None = None
        z_open = 0  # slices < z_open are final

        for i in range(0, len(slices), self.sw_batch_size):
            chunk = slices[i : i + self.sw_batch_size]
            # cat copies, so the network never gets a view of the caller's input.
            win_data = torch.cat([img[(slice(None), slice(None), *s)] for s in chunk]).to(sw_device)
            seg = network(win_data, *args, **kwargs)
            if not isinstance(seg, torch.Tensor) or seg.shape[2:] != roi or seg.shape[0] != len(chunk):
                got = getattr(seg, "shape", type(seg))
                raise ValueError(f"network must return one (n, C, *{roi}) tensor for n windows, got {got}.")
            if buf is None:
                if self.reduce is None:
                    self._check_classes(seg.shape[1])
                buf = torch.zeros((seg.shape[1], *size[:-1], rz), dtype=compute_dtype, device=device)
            # Same arithmetic as MONAI: weight in place, in the logits' dtype, move to `device`, then `out += p`.
            # In place because a fresh window-sized product costs an allocation and its page faults per window
            # (MONAI does it in place too); win_data is our own copy, so even an identity network is safe.
            if seg.is_inference() and not torch.is_inference_mode_enabled():
                seg = (seg * weight).to(seg.dtype)  # a network that made inference tensors: those are read-only
            else:
                seg *= weight
            seg = seg.to(device)
            for p, s in zip(seg, chunk):  # p: (C, *roi)
                z0 = s[-1].start
                if z0 != z_open:  # first window of the next slab: no window left starts before z0
                    self._flush(buf, labels, z_open, z0, self.reduce)
                    z_open = z0
                buf[(slice(None), *s[:-1])] += p
            del p, seg, win_data  # p would keep this batch's logits alive through the next network call
        assert buf is not None
        self._flush(buf, labels, z_open, depth, self.reduce, reuse=False)

        if any(pad):  # crop back to the input size (MONAI's final_slicing with zoom 1)
            crop = [slice(pad[2 * (nd - 1 - k)], pad[2 * (nd - 1 - k)] + orig_size[k]) for k in range(nd)]
            labels = labels[(slice(None), slice(None), *crop)].contiguous()
        return labels

    @staticmethod
    def _flush(
        buf: torch.Tensor, labels: torch.Tensor, z_from: int, z_to: int, reduce: Callable | None, reuse: bool = True
    ) -> None:
        """Slices [z_from, z_to) are final: argmax them into labels, then (if reuse) slide buf to start at z_to.

        buf: ``(C, *spatial[:-1], rz)`` holding [z_from, z_from + rz); labels: ``(1, 1, *spatial)``.
        """
        n, rz = z_to - z_from, buf.shape[-1]
        # argmax returns the first maximum, as torch.argmax on MONAI's output does.
        finished = buf[..., :n]
        labels[0, 0, ..., z_from:z_to] = torch.argmax(finished, dim=0) if reduce is None else reduce(finished)
        if not reuse:
            return
        # Carry the overlap [z_to, z_from + rz) to the front, in pieces of at most n slices so that source and
        # destination never overlap (overlap > 0.5 makes n < rz - n) and no temporary is needed.
        for j in range(0, rz - n, n):
            k = min(n, rz - n - j)
            buf[..., j : j + k].copy_(buf[..., n + j : n + j + k])
        buf[..., rz - n :].zero_()

    def _check_classes(self, n_classes: int) -> None:
        if not self.label_dtype.is_floating_point and n_classes - 1 > torch.iinfo(self.label_dtype).max:
            raise ValueError(f"label_dtype {self.label_dtype} cannot hold {n_classes} classes.")
