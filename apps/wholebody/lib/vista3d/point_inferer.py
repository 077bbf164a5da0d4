"""VISTA3D point-window inference with a cache of image-encoder outputs, for repeat clicks.

In VISTA3D (``monai.networks.nets.vista3d.VISTA3D``) a window costs one pass of the image encoder
(SegResNetDS2, ~14.5 s for a 128^3 patch on a 2-core CPU) plus the prompt heads (point head ~3.5 s).
The encoder output depends only on the window's pixels (and the weights), not on the prompts, so a
second click on the same image can reuse it and run only the heads.

``CachedPointWindowInferer`` runs ``monai.apps.vista3d.inferer.point_based_window_inferer`` itself
(same windows, padding, stitching, NaN outside the windows, ``prev_mask`` / ``point_start`` /
``center_only`` / ``margin`` handling) with a predictor that re-implements the inference path of
``VISTA3D.forward`` in monai 1.4.0 step for step, except that ``image_encoder`` is called through the
cache (and, within one call, windows with identical slices run the heads once: bitwise the same
output, since every window of a call gets the same prompts). The network is never modified (no monkey-patching, no ``keep_cache`` state), so one network
can serve other tasks at the same time.

Cache:
    image level   key = (model token, caller ``image_key``, preprocessed shape, content digest
                  of the whole preprocessed image when ``image_key`` is None);
    window level  key = (window slices in the padded image, padding mode, blake2b digest of the
                  window's pixels, dtype/device/autocast state);
    value         ``{"point": out, "auto": out_auto}`` = the encoder outputs for the point branch
                  and the class (auto) branch, filled on demand (a branch that was not needed is
                  not computed).
    The model token is ``model_key`` (given by the caller, e.g. the checkpoint path + mtime) plus
    a serial number of the encoder object, the sum of its parameters' in-place version counters
    (bumped by ``load_state_dict`` and optimiser steps), a digest of its first and last parameter
    tensors, ``network.training`` and the parameter device, so new weights never meet old
    embeddings. Because every window lookup also checks the digest of
    the window's pixels, a stale embedding cannot be returned even if a caller reuses an
    ``image_key`` for changed content.
    The cache is an LRU bounded by bytes: when over ``cache_bytes`` it drops least recently used
    images first, then least recently used windows of the current image; an entry bigger than the
    whole bound is not kept. One 128^3 window costs 48 x 128^3 x 4 B = 384 MiB per branch (fp32).
"""

from __future__ import annotations

import copy
import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.vista3d.inferer import point_based_window_inferer
from monai.data.meta_tensor import MetaTensor
from monai.inferers import SlidingWindowInfererAdapt

__all__ = ["CachedPointWindowInferer", "transform_points", "tensor_digest"]

_BRANCHES = ("point", "auto")


def tensor_digest(t: torch.Tensor) -> str:
    """blake2b-128 of a tensor's values, dtype and shape (copies to CPU if needed)."""
    t = t.as_tensor() if isinstance(t, MetaTensor) else t
    arr = t.detach().to("cpu").contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(arr.shape)}|{arr.dtype}".encode())
    if arr.dtype == torch.bfloat16:
        arr = arr.view(torch.int16)
    h.update(memoryview(arr.numpy()).cast("B"))
    return h.hexdigest()


def transform_points(points: Any, from_affine: Any, to_affine: Any) -> torch.Tensor:
    """Voxel points of one image -> voxel points of another grid of the same world (as the bundle).

    ``points``: [N, 3] or [B, N, 3] voxel indices in the grid of ``from_affine`` (e.g. the original
    image, ``meta["original_affine"]``); returns float coordinates in the grid of ``to_affine`` (e.g.
    the preprocessed image's ``affine``), shape [B, N, 3] (B = 1 for [N, 3] input), as
    ``scripts/evaluator.py::transform_points`` with ``inv(to_affine) @ from_affine``.
    """
    p = np.asarray(points.tolist() if hasattr(points, "tolist") else points, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(f"points must be [N, 3] or [B, N, 3], got shape {p.shape}")
    a_from = np.asarray(from_affine.tolist() if hasattr(from_affine, "tolist") else from_affine, dtype=np.float64)
    a_to = np.asarray(to_affine.tolist() if hasattr(to_affine, "tolist") else to_affine, dtype=np.float64)
    a_from, a_to = a_from.reshape(-1, 4, 4)[0], a_to.reshape(-1, 4, 4)[0]
    m = np.linalg.inv(a_to) @ a_from
    homog = np.concatenate([p, np.ones(p.shape[:-1] + (1,))], axis=-1)
    out = homog @ m.T
    return torch.from_numpy(out[..., :3])


def _autocast_state(device_type: str) -> tuple:
    """Autocast changes the encoder's output dtype/values: part of the window key."""
    try:
        return (torch.is_autocast_enabled(device_type), str(torch.get_autocast_dtype(device_type)))
    except (AttributeError, TypeError, RuntimeError):  # older torch
        return (torch.is_autocast_enabled(),)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.element_size() * t.nelement()


def _plain(t: Any) -> Any:
    return t.as_tensor() if isinstance(t, MetaTensor) else t


class _Entry:
    """All cached windows of one image (LRU ordered)."""

    __slots__ = ("windows", "nbytes")

    def __init__(self) -> None:
        self.windows: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.nbytes = 0


class CachedPointWindowInferer:
    """``point_based_window_inferer`` (and the bundle's sliding window) with an encoder cache.

    Args:
        roi_size: window size (the bundle's ``patch_size``, 128^3).
        cache_bytes: bound on the bytes of cached encoder outputs (all images together).
        cache_device: where to keep cached embeddings (``None``: where the encoder computed them;
            ``"cpu"`` saves GPU memory at the cost of one copy per window and call).
        check_window_content: key every window also by a digest of its pixels (on by default;
            ~10 ms per 128^3 window). With it off, correctness rests on ``image_key``.
        reuse_identical_windows: within one point-window call, run the heads once for windows with
            the same slices (``point_based_window_inferer`` runs one window per point, with the same
            prompts each time, and sums them); the output is bitwise the same.

    Counters (cumulative, for tests and logs): ``encoder_runs`` (calls of ``network.image_encoder``),
    ``cache_hits`` / ``cache_misses`` (window look-ups served / not served from the cache),
    ``evictions`` (windows dropped), ``head_runs`` (windows whose heads ran), ``head_reuses``
    (windows whose output was taken from an identical window of the same call).
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (128, 128, 128),
        cache_bytes: int = 2 * 1024**3,
        cache_device: str | torch.device | None = None,
        check_window_content: bool = True,
        reuse_identical_windows: bool = True,
    ) -> None:
        if len(roi_size) != 3 or any(int(r) < 1 for r in roi_size):
            raise ValueError(f"roi_size must be 3 positive sizes, got {roi_size}")
        if int(cache_bytes) < 0:
            raise ValueError("cache_bytes must be >= 0")
        self.roi_size = tuple(int(r) for r in roi_size)
        self.cache_bytes = int(cache_bytes)
        self.cache_device = torch.device(cache_device) if cache_device is not None else None
        self.check_window_content = check_window_content
        self.reuse_identical_windows = reuse_identical_windows
        self._images: OrderedDict[tuple, _Entry] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.RLock()
        self._serials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._next_serial = 0
        self.encoder_runs = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.evictions = 0
        self.head_runs = 0
        self.head_reuses = 0

    # ------------------------------------------------------------------ cache bookkeeping
    @property
    def nbytes(self) -> int:
        """Bytes of cached embeddings."""
        return self._nbytes

    @property
    def num_images(self) -> int:
        return len(self._images)

    @property
    def num_windows(self) -> int:
        with self._lock:
            return sum(len(e.windows) for e in self._images.values())

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "encoder_runs": self.encoder_runs,
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "evictions": self.evictions,
                "head_runs": self.head_runs,
                "head_reuses": self.head_reuses,
                "images": len(self._images),
                "windows": sum(len(e.windows) for e in self._images.values()),
                "nbytes": self._nbytes,
                "cache_bytes": self.cache_bytes,
            }

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._nbytes = 0

    def cached_image_keys(self) -> list[tuple]:
        """Full image-level keys, least recently used first."""
        with self._lock:
            return list(self._images.keys())

    def model_token(self, network: torch.nn.Module, model_key: Any = None) -> tuple:
        """What identifies the encoder weights: the caller's ``model_key``; a serial number of the encoder
        object (unlike ``id()``, never reused by a later object); the sum of its parameters' in-place
        version counters (``load_state_dict``, optimiser steps); a digest of its first and last
        parameter tensors (a fresh copy loaded from another checkpoint); mode and device."""
        enc = network.image_encoder
        with self._lock:
            serial = self._serials.get(enc)
            if serial is None:
                self._next_serial += 1
                serial = self._serials[enc] = self._next_serial
        params = list(enc.parameters())
        version = sum(int(p._version) for p in params)
        sample = tensor_digest(torch.cat([params[0].detach().flatten(), params[-1].detach().flatten()])) if params else ""
        device = str(params[0].device) if params else "none"
        return (model_key, serial, version, sample, bool(network.training), device)

    def image_cache_key(self, network: torch.nn.Module, image: torch.Tensor, image_key: Any, model_key: Any) -> tuple:
        """Image-level key; the whole-image digest is computed only when ``image_key`` is None."""
        content = tensor_digest(image) if image_key is None else None
        return (self.model_token(network, model_key), image_key, tuple(image.shape), content)

    def _lookup(self, ikey: tuple, wkey: tuple) -> dict[str, torch.Tensor] | None:
        with self._lock:
            entry = self._images.get(ikey)
            if entry is None:
                return None
            self._images.move_to_end(ikey)
            value = entry.windows.get(wkey)
            if value is not None:
                entry.windows.move_to_end(wkey)
            return value

    def _store(self, ikey: tuple, wkey: tuple, new: dict[str, torch.Tensor]) -> None:
        with self._lock:
            entry = self._images.get(ikey)
            old = entry.windows.get(wkey, {}) if entry is not None else {}
            merged = {**old, **{k: v for k, v in new.items() if v is not None}}
            size = sum(_nbytes(v) for v in merged.values())
            if size > self.cache_bytes:
                return  # bigger than the whole cache: never kept (old parts stay as they were)
            if entry is None:
                entry = self._images[ikey] = _Entry()
            self._images.move_to_end(ikey)
            prev = sum(_nbytes(v) for v in old.values())
            entry.windows[wkey] = merged
            entry.windows.move_to_end(wkey)
            entry.nbytes += size - prev
            self._nbytes += size - prev
            self._evict(keep=(ikey, wkey))

    def _evict(self, keep: tuple) -> None:
        keep_image, keep_window = keep
        # 1) least recently used other images, whole
        for ikey in list(self._images.keys()):
            if self._nbytes <= self.cache_bytes:
                return
            if ikey == keep_image:
                continue
            entry = self._images.pop(ikey)
            self._nbytes -= entry.nbytes
            self.evictions += len(entry.windows)
        # 2) least recently used windows of the current image
        entry = self._images.get(keep_image)
        if entry is None:
            return
        for wkey in list(entry.windows.keys()):
            if self._nbytes <= self.cache_bytes:
                return
            if wkey == keep_window:
                continue
            size = sum(_nbytes(v) for v in entry.windows.pop(wkey).values())
            entry.nbytes -= size
            self._nbytes -= size
            self.evictions += 1

    # ------------------------------------------------------------------ encoder through the cache
    def _window_key(self, patch_coords: Sequence[slice], window: torch.Tensor, pad_mode: str) -> tuple:
        slices = tuple((s.start, s.stop) for s in list(patch_coords)[-3:])
        digest = tensor_digest(window) if self.check_window_content else None
        return (slices, pad_mode, digest, str(window.dtype), str(window.device), _autocast_state(window.device.type))

    def _encode(
        self,
        network: torch.nn.Module,
        window: torch.Tensor,
        ikey: tuple,
        wkey: tuple,
        with_point: bool,
        with_label: bool,
    ) -> tuple[Any, Any]:
        need = [b for b, on in zip(_BRANCHES, (with_point, with_label)) if on]
        cached = self._lookup(ikey, wkey) or {}
        missing = [b for b in need if b not in cached]
        if not missing:
            with self._lock:
                self.cache_hits += 1
            got = cached
        else:
            with self._lock:
                self.cache_misses += 1
                self.encoder_runs += 1
            out, out_auto = network.image_encoder(window, with_point="point" in missing, with_label="auto" in missing)
            fresh: dict[str, torch.Tensor] = {}
            if "point" in missing:
                fresh["point"] = _plain(out).detach()
            if "auto" in missing:
                fresh["auto"] = _plain(out_auto).detach()
            got = {**cached, **fresh}
            if self.cache_device is not None:
                fresh = {k: v.to(self.cache_device) for k, v in fresh.items()}
            self._store(ikey, wkey, fresh)
        dev = window.device
        point = got.get("point") if with_point else None
        auto = got.get("auto") if with_label else None
        point = point.to(dev) if point is not None else None
        auto = auto.to(dev) if auto is not None else None
        return point, auto

    # ------------------------------------------------------------------ VISTA3D.forward, inference path
    def _forward(
        self,
        network: torch.nn.Module,
        ikey: tuple,
        pad_mode: str,
        input_images: torch.Tensor,
        patch_coords: list[Sequence[slice]] | None = None,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        class_vector: torch.Tensor | None = None,
        prompt_class: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_set: Sequence[int] | None = None,
        prev_mask: torch.Tensor | None = None,
        radius: int | None = None,
        val_point_sampler: Any = None,
        transpose: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``VISTA3D.forward`` of monai 1.4.0 for inference (``patch_coords`` given, no labels)."""
        if labels is not None or label_set is not None or val_point_sampler is not None:
            raise NotImplementedError("label-sampled validation points are not supported by the cached inferer")
        if patch_coords is None:
            raise ValueError("the cached inferer needs patch_coords (window inference)")
        net = network
        labels, prev_mask, point_coords = net.update_slidingwindow_padding(
            kwargs.get("pad_size", None), labels, prev_mask, point_coords
        )
        image_size = input_images.shape[-3:]
        device = input_images.device
        if point_coords is None and class_vector is None:
            return net.NINF_VALUE + torch.zeros([1, 1, *image_size], device=device)

        bs = net.get_foreground_class_count(class_vector, point_coords)
        if point_coords is not None:
            point_coords, point_labels = net.update_point_to_patch(patch_coords[0], point_coords, point_labels)

        mapping_index = None
        if point_coords is not None and point_labels is not None:
            mapping_index = ((point_labels != -1).sum(1) > 0).to(torch.bool)
            if mapping_index.any():
                point_coords = point_coords[mapping_index]
                point_labels = point_labels[mapping_index]
                if prompt_class is not None:
                    prompt_class = prompt_class[mapping_index]
            elif net.auto_freeze:
                mapping_index.fill_(True)
            else:
                point_coords, point_labels = None, None

        if point_coords is None and class_vector is None:
            logits = net.NINF_VALUE + torch.zeros([bs, 1, *image_size], device=device)
            return logits.transpose(1, 0) if transpose else logits

        # the only change to VISTA3D.forward: the encoder output comes through the cache, window by window
        # (a sliding-window batch of several windows is encoded one window at a time)
        with_point, with_label = point_coords is not None, class_vector is not None
        if len(patch_coords) == 1:
            wkey = self._window_key(patch_coords[0], input_images, pad_mode)
            out, out_auto = self._encode(net, input_images, ikey, wkey, with_point, with_label)
        else:
            if with_point:
                raise ValueError("point prompts need one window per batch")
            parts = []
            for b, pc in enumerate(patch_coords):
                win = input_images[b : b + 1]
                parts.append(self._encode(net, win, ikey, self._window_key(pc, win, pad_mode), False, True)[1])
            out, out_auto = None, torch.cat(parts, 0)
        input_images = None  # type: ignore
        self.head_runs += 1

        if class_vector is not None:
            logits, _ = net.class_head(out_auto, class_vector)
            if point_coords is not None:
                point_logits = net.point_head(out, point_coords, point_labels, class_vector=prompt_class)
                logits = net.connected_components_combine(
                    logits, point_logits, point_coords, point_labels, mapping_index  # type: ignore
                )
        else:
            logits = net.NINF_VALUE + torch.zeros([bs, 1, *image_size], device=device, dtype=out.dtype)
            logits[mapping_index] = net.point_head(out, point_coords, point_labels, class_vector=prompt_class)
            if prev_mask is not None:
                logits = net.connected_components_combine(
                    prev_mask[patch_coords[0]].transpose(1, 0).to(logits.device),
                    logits[mapping_index],
                    point_coords,  # type: ignore
                    point_labels,  # type: ignore
                    mapping_index,
                )
        if transpose:
            logits = logits.transpose(1, 0)
        return logits

    # ------------------------------------------------------------------ public entry points
    @staticmethod
    def _check_network(network: torch.nn.Module) -> None:
        for part in ("image_encoder", "class_head", "point_head"):
            if not hasattr(network, part):
                raise TypeError(f"network has no '{part}': a monai VISTA3D (e.g. vista3d132) is expected")

    def point_window(
        self,
        network: torch.nn.Module,
        image: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        image_key: Any = None,
        class_vector: torch.Tensor | None = None,
        prompt_class: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        point_start: int = 0,
        center_only: bool = True,
        margin: int = 5,
        model_key: Any = None,
        **kwargs: Any,
    ) -> MetaTensor:
        """Exactly ``point_based_window_inferer(image, roi_size, network, point_coords, ...,
        transpose=True)``, with the encoder behind the cache.

        Args:
            network: a monai ``VISTA3D`` (``vista3d132``), in eval mode.
            image: [1, 1, H, W, D] preprocessed image.
            point_coords: [1, N, 3] points in voxel coordinates of ``image``.
            point_labels: [1, N].
            image_key: hashable identity of the image content and its preprocessing (e.g.
                ``(image_id, mtime, size, "1.5mm-vista3d-v1")``); ``None``: a digest of ``image``.
            class_vector, prompt_class, prev_mask, point_start, center_only, margin: as
                ``point_based_window_inferer`` (``class_vector`` / ``prompt_class``: [1, 1]).
            model_key: identity of the weights (e.g. checkpoint path + mtime).
            kwargs: passed on as ``point_based_window_inferer`` passes them to the network (ignored
                by VISTA3D: ``with_coord``, ``mode``, ``overlap``, ...).
        Returns:
            [1, 1, H, W, D] logits (before sigmoid), NaN outside the windows (or ``prev_mask`` there).
        """
        self._check_network(network)
        kwargs.setdefault("transpose", True)
        with torch.no_grad():
            ikey = self.image_cache_key(network, image, image_key, model_key)

            # every window of one call gets the same prompts: two points whose windows coincide (always the
            # case for an image no bigger than the roi) give bitwise the same output, so compute it once
            memo: dict[tuple, torch.Tensor] = {}

            def predictor(batch_image, **kw):
                wslices = tuple((sl.start, sl.stop) for sl in kw["patch_coords"][0][-3:])
                if self.reuse_identical_windows and wslices in memo:
                    with self._lock:
                        self.head_reuses += 1
                    return memo[wslices]
                out = self._forward(network, ikey, "constant0", batch_image, **kw)
                if self.reuse_identical_windows:
                    memo[wslices] = out
                return out

            return self._point_windows(
                image,
                predictor,
                point_coords=point_coords,
                point_labels=point_labels,
                class_vector=class_vector,
                prompt_class=prompt_class,
                prev_mask=prev_mask,
                point_start=point_start,
                center_only=center_only,
                margin=margin,
                **kwargs,
            )

    def _point_windows(self, image: torch.Tensor, predictor: Callable[..., torch.Tensor], **kwargs: Any) -> MetaTensor:
        """Places the windows around the points, runs ``predictor`` on each and stitches the outputs: monai's
        ``point_based_window_inferer``, one window centred on each point. Subclasses place them otherwise."""
        return point_based_window_inferer(inputs=image, roi_size=self.roi_size, predictor=predictor, **kwargs)

    def sliding_window(
        self,
        network: torch.nn.Module,
        image: torch.Tensor,
        class_vector: torch.Tensor,
        image_key: Any = None,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        prompt_class: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        overlap: float = 0.25,
        sw_batch_size: int = 1,
        model_key: Any = None,
        **sw_kwargs: Any,
    ) -> torch.Tensor:
        """The bundle's automatic path: ``SlidingWindowInfererAdapt(roi_size, sw_batch_size,
        with_coord=True, padding_mode="replicate")`` (its default overlap 0.25, constant blending)
        with the encoder behind the cache; a second request on the same image with other classes
        then runs only the class head. ``class_vector``: [B, 1] global ids. Returns [1, B, H, W, D].
        """
        self._check_network(network)
        sw_kwargs.setdefault("padding_mode", "replicate")
        pad_mode = str(sw_kwargs["padding_mode"])
        with torch.no_grad():
            ikey = self.image_cache_key(network, image, image_key, model_key)

            def predictor(batch_image, patch_coords, **kw):
                return self._forward(network, ikey, pad_mode, batch_image, patch_coords=patch_coords, **kw)

            inferer = SlidingWindowInfererAdapt(
                roi_size=self.roi_size, sw_batch_size=sw_batch_size, overlap=overlap, with_coord=True, **sw_kwargs
            )
            return inferer(
                image,
                predictor,
                transpose=True,
                point_coords=point_coords,
                point_labels=point_labels,
                class_vector=class_vector,
                prompt_class=prompt_class,
                prev_mask=prev_mask,
            )

    def __call__(
        self,
        network: torch.nn.Module,
        image: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        class_vector: torch.Tensor | None = None,
        image_key: Any = None,
        prev_mask: torch.Tensor | None = None,
        model_key: Any = None,
        overlap: float = 0.25,
    ) -> torch.Tensor:
        """The bundle's ``scripts/inferer.py::Vista3dInferer`` with ``use_point_window=True``:
        ``prompt_class`` = ``class_vector``; a class id above the point head's ``last_supported``
        (a new class) drops ``class_vector`` (zero-shot points); with points the point windows run,
        otherwise the sliding window."""
        prompt_class = copy.deepcopy(class_vector)
        if class_vector is not None and torch.any(class_vector > network.point_head.last_supported):
            class_vector = None
        common = {"image_key": image_key, "prompt_class": prompt_class, "prev_mask": prev_mask, "model_key": model_key}
        if point_coords is not None:
            return self.point_window(
                network, image, point_coords, point_labels, class_vector=class_vector, with_coord=True, **common  # type: ignore[arg-type]
            )
        if class_vector is None:
            raise ValueError("give points or a class_vector")
        return self.sliding_window(network, image, class_vector, overlap=overlap, **common)
