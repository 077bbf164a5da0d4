"""Point windows placed on a fixed grid, so that a second click near the first reuses its window.

``monai.apps.vista3d.inferer.point_based_window_inferer`` centres one ``roi_size`` window on every
click. Two clicks a few voxels apart then give two different windows, and the cached encoder output
of the first (``CachedPointWindowInferer``) cannot serve the second: on a CPU every new click would
cost a full image-encoder pass (~15-25 s for 128^3 here) instead of the prompt heads (~3-5 s).

``GridPointWindowInferer`` runs the same loop (padding, one window per point from ``point_start``,
summing overlapping outputs, NaN where no window ran, ``prev_mask`` outside the windows, unpadding)
but places the windows differently:

* a point that lies in the window of an earlier point of the request, at least ``window_grid / 2``
  voxels from its inner edges, takes that window (Slicer sends every click again with each request, in
  the order they were placed, so the first click's window stays put while the next ones join it);
* otherwise its window starts on a grid of step ``window_grid`` voxels, the one whose centre is nearest
  the point (at most ``window_grid / 2`` voxels away).

Either way a point has at least ``window_grid / 2`` voxels of context on every side that is not the
image's edge (32 with the default step of half the 128^3 roi), the placement depends only on the
request, and a repeat click near the earlier ones finds its window's encoder output in the cache.
``window_grid=0`` is the bundle's exact centring (the parent class, unchanged).

Along an axis where the (padded) image is no longer than the roi both place the same single window,
so for images up to ``roi_size`` (e.g. a 64x64x30 crop at 3 mm) the output is identical to the
bundle's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.apps.vista3d.inferer import _pad_previous_mask
from monai.data.meta_tensor import MetaTensor

from lib.vista3d.point_inferer import CachedPointWindowInferer

__all__ = ["GridPointWindowInferer", "grid_window"]


def grid_window(p: float, roi: int, size: int, step: int) -> tuple[int, int]:
    """``[left, right)`` of the window of length ``roi`` in an axis of length ``size`` (>= roi) for a
    point at ``p``: starts on ``0, step, 2 step, ...`` plus ``size - roi``, the one whose centre is
    nearest ``p`` (the lower on a tie)."""
    if size <= roi:
        return 0, roi
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    best = min(starts, key=lambda s: (abs(s + roi / 2.0 - float(p)), s))
    return best, best + roi


class _ClassHeadOnMapped:
    """``ClassMappingClassify.forward`` (monai 1.4.0) given ``image_post_mapping(src)`` already computed."""

    def __init__(self, head: torch.nn.Module):
        self.head = head

    def __call__(self, mapped: torch.Tensor, class_vector: torch.Tensor):
        head = self.head
        b, c, h, w, d = mapped.shape
        class_embedding = head.class_embeddings(class_vector)
        if head.use_mlp:
            class_embedding = head.mlp(class_embedding)
        masks = [(class_embedding @ mapped[[i]].view(1, c, h * w * d)).view(-1, 1, h, w, d) for i in range(b)]
        return torch.cat(masks, 1), class_embedding


class _PointHeadOnDownsampled:
    """``PointMappingSAM.forward`` (monai 1.4.0) given ``feat_downsample(out)`` already computed and the
    spatial size of ``out`` (the window)."""

    def __init__(self, head: torch.nn.Module, out_shape: Sequence[int]):
        self.head = head
        self.out_shape = tuple(int(s) for s in out_shape)

    def __call__(self, out_low, point_coords, point_labels, class_vector=None):
        head = self.head
        points = point_coords + 0.5  # shift to the centre of the voxel
        point_embedding = head.pe_layer.forward_with_coords(points, self.out_shape)
        point_embedding[point_labels == -1] = 0.0
        point_embedding[point_labels == -1] += head.not_a_point_embed.weight
        point_embedding[point_labels == 0] += head.point_embeddings[0].weight
        point_embedding[point_labels == 1] += head.point_embeddings[1].weight
        point_embedding[point_labels == 2] += head.point_embeddings[0].weight + head.special_class_embed.weight
        point_embedding[point_labels == 3] += head.point_embeddings[1].weight + head.special_class_embed.weight
        output_tokens = head.mask_tokens.weight.unsqueeze(0).expand(point_embedding.size(0), -1, -1)
        if class_vector is None:
            supported = head.supported_embed.weight.unsqueeze(0).expand(point_embedding.size(0), -1, -1)
            tokens_all = torch.cat((output_tokens, point_embedding, supported), dim=1)
        else:
            class_embeddings = [
                head.zeroshot_embed.weight if i > head.last_supported else head.supported_embed.weight for i in class_vector
            ]
            tokens_all = torch.cat((output_tokens, point_embedding, torch.stack(class_embeddings)), dim=1)
        masks = []
        for i in range(int(math.ceil(tokens_all.shape[0] / head.max_prompt))):
            tokens = tokens_all[i * head.max_prompt : min((i + 1) * head.max_prompt, tokens_all.shape[0])]
            src = torch.repeat_interleave(out_low, tokens.shape[0], dim=0)
            pos_src = torch.repeat_interleave(head.pe_layer(out_low.shape[-3:]).unsqueeze(0), tokens.shape[0], dim=0)
            b, c, h, w, d = src.shape
            hs, src = head.transformer(src, pos_src, tokens)
            hyper_in = head.output_hypernetworks_mlps(hs[:, :1, :])
            src = src.transpose(1, 2).view(b, c, h, w, d)
            upscaled = head.output_upscaling(src)
            b, c, h, w, d = upscaled.shape
            masks.append((hyper_in @ upscaled.view(b, c, h * w * d)).view(-1, 1, h, w, d))
        return torch.vstack(masks)


class _HeadReadyNetwork:
    """The network as ``CachedPointWindowInferer._forward`` sees it: ``image_encoder`` also runs the
    prompt-independent first layers of the heads (``point_head.feat_downsample``,
    ``class_head.image_post_mapping``), so the cache keeps their outputs, and the heads skip them."""

    def __init__(self, network: torch.nn.Module, window_size: Sequence[int]):
        self._network = network
        self.point_head = _PointHeadOnDownsampled(network.point_head, window_size)
        self.class_head = _ClassHeadOnMapped(network.class_head)

    def image_encoder(self, window, with_point=True, with_label=True):
        out, out_auto = self._network.image_encoder(window, with_point=with_point, with_label=with_label)
        out = self._network.point_head.feat_downsample(out) if with_point else None
        out_auto = self._network.class_head.image_post_mapping(out_auto) if with_label else None
        return out, out_auto

    def __getattr__(self, name):
        return getattr(self._network, name)


class GridPointWindowInferer(CachedPointWindowInferer):
    """``CachedPointWindowInferer`` whose point windows snap to a grid (see the module docstring).

    Args:
        window_grid: grid step in voxels; 0 centres every window on its point (the bundle's placement).
        other args: as ``CachedPointWindowInferer``.
    """

    def __init__(self, *args: Any, window_grid: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(window_grid) < 0:
            raise ValueError(f"window_grid must be >= 0, got {window_grid}")
        if window_grid and any(2 * int(window_grid) > r for r in self.roi_size):
            raise ValueError(f"window_grid {window_grid} is over half the roi {self.roi_size}: points could reach a window's edge")
        self.window_grid = int(window_grid)

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "window_grid": self.window_grid}

    def window_for(self, point: Sequence[float], size: Sequence[int], chosen: list[tuple]) -> tuple:
        """The window of a point: the first window of an earlier point of the request that holds it at least
        ``window_grid / 2`` voxels from its inner edges, else its grid window (appended to ``chosen``)."""
        margin = self.window_grid / 2.0

        def holds(bounds) -> bool:
            return all(
                lo < c < hi and (lo == 0 or c - lo >= margin) and (hi == n or hi - c >= margin)
                for c, (lo, hi), n in zip(point, bounds, size)
            )

        for bounds in chosen:
            if holds(bounds):
                return bounds
        bounds = tuple(grid_window(c, r, n, self.window_grid) for c, r, n in zip(point, self.roi_size, size))
        chosen.append(bounds)
        return bounds

    def image_cache_key(self, network, image, image_key, model_key) -> tuple:
        return (*super().image_cache_key(network, image, image_key, model_key), "head-ready")

    def _forward(self, network, ikey, pad_mode, input_images, **kwargs):
        # the parent's VISTA3D.forward, on features that already went through the heads' first layers
        return super()._forward(_HeadReadyNetwork(network, input_images.shape[-3:]), ikey, pad_mode, input_images, **kwargs)

    def _point_windows(
        self,
        image: torch.Tensor,
        predictor: Callable[..., torch.Tensor],
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        prev_mask: torch.Tensor | None = None,
        point_start: int = 0,
        center_only: bool = True,
        margin: int = 5,
        **kwargs: Any,
    ) -> MetaTensor:
        """As ``CachedPointWindowInferer._point_windows``; windows on the grid when ``window_grid > 0``.

        Args:
            image: [1, 1, H, W, D]; point_coords: [1, N, 3] voxel coordinates of ``image``; point_labels: [1, N].
        Returns:
            [1, 1, H, W, D] logits, NaN outside the windows (or ``prev_mask`` there).
        """
        if not self.window_grid or not center_only:
            return super()._point_windows(
                image, predictor, point_coords=point_coords, point_labels=point_labels, prev_mask=prev_mask,
                point_start=point_start, center_only=center_only, margin=margin, **kwargs,
            )
        if point_coords.shape[0] != 1:
            raise ValueError("Only supports single object point click.")
        if image.ndim != 5:
            raise ValueError("Input image should be 5D.")
        roi = self.roi_size
        padded, pad = _pad_previous_mask(copy.deepcopy(image), roi)
        point_coords = point_coords + torch.tensor([pad[-2], pad[-4], pad[-6]]).to(point_coords.device)
        prev = _pad_previous_mask(copy.deepcopy(prev_mask), roi)[0] if prev_mask is not None else None
        size = padded.shape[-3:]
        stitched = stitched_mask = None
        chosen: list[tuple] = []
        for p in point_coords[0][point_start:]:
            wslices = self.window_for([float(c) for c in p], [int(n) for n in size], chosen)
            window = (slice(None), slice(None), *(slice(int(lo), int(hi)) for lo, hi in wslices))
            output = predictor(
                padded[window], patch_coords=[window], point_coords=point_coords, point_labels=point_labels,
                prev_mask=prev, **kwargs,
            )
            if stitched is None:
                stitched = torch.zeros([1, output.shape[1], *size], device="cpu")
                stitched_mask = torch.zeros([1, output.shape[1], *size], device="cpu")
            stitched[window] += output.to("cpu")
            stitched_mask[window] = 1
        if stitched is None:
            raise ValueError(f"no point from point_start={point_start}: nothing to compute")
        stitched = stitched / stitched_mask  # NaN where no window ran, as monai's
        crop = (
            slice(None), slice(None), slice(pad[4], size[0] - pad[5]), slice(pad[2], size[1] - pad[3]),
            slice(pad[0], size[2] - pad[1]),
        )
        stitched, stitched_mask = stitched[crop], stitched_mask[crop]
        if prev is not None:
            prev = prev[crop].to("cpu")
            stitched[stitched_mask < 1] = prev[stitched_mask < 1]
        if not isinstance(image, MetaTensor):
            image = MetaTensor(image)
        return MetaTensor(stitched, affine=image.meta["affine"], meta=image.meta)
