"""Epistemic uncertainty of a segmentation network by Monte Carlo dropout, on a bounded input.

Pure tensor code, apart from MONAI Label: the scoring method (``lib/activelearning/scoring.py``)
and the simulated annotation study (``bench/``) both call it.

From ``T`` passes over at most ``windows`` windows of ``roi_size``, with dropout sampling::

    p_t = softmax(net_t(x))                 one pass, t = 1..T                   (C, X, Y, Z)
    p = mean_t p_t;  H = H(p)               predictive entropy per voxel, nats
    BALD = H - mean_t H(p_t)                per voxel, >= 0

* the study's score: the mean BALD mutual information (Houlsby et al. 2011; Gal et al. 2017) over
  the body voxels. It is high where the passes disagree (the model does not know), and low both
  where the model is sure and where it is consistently unsure between classes (aleatoric).
* per structure ``c``: ``sum_v H(v) p_c(v) / sum_v p_c(v)`` over the window's voxels (lungs too,
  which are not "body"): the predictive entropy weighted by the structure's mean probability,
  divided by its predicted (expected) volume, so in [0, ln C] whatever the structure's size; and
  ``voxels[c]``, how many voxels the mean prediction labels ``c``. A whole-volume mean is ruled
  by background; these are not.
* the study's features: the encoder output (the SegResNet's deepest level) averaged over space,
  passes and windows, for diversity in the current model's feature space.

All from the same ``T`` passes: the extra work is a sum and an argmax over ``p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

# Body voxels: above this HU (air and lung parenchyma are about -1000 and -850).
BODY_HU = -500.0


def enable_mc_dropout(network: torch.nn.Module) -> torch.nn.Module:
    """Eval mode (norm layers use their inference behaviour) with only the dropout layers sampling."""
    network.eval()
    dropouts = [m for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    if not dropouts:
        raise ValueError(f"{type(network).__name__} has no dropout layer: MC dropout cannot sample it")
    for m in dropouts:
        m.train()
    return network


def window_starts(size: int, roi: int) -> list[int]:
    """The fewest windows of ``roi`` that cover one axis, evenly spread (they overlap by less than ``roi``)."""
    if size <= roi:
        return [0]
    count = math.ceil(size / roi)
    return sorted({round(i * (size - roi) / (count - 1)) for i in range(count)})


def pick_windows(body: torch.Tensor, roi_size: Sequence[int], windows: int) -> list[tuple[slice, ...]]:
    """The ``windows`` tiles of the covering grid (:func:`window_starts`) that hold the most body voxels.

    ``body``: (X, Y, Z) bool, already padded to at least ``roi_size``. Ties (e.g. no body at all)
    keep grid order, so the choice is deterministic.
    """
    tiles = []
    for x in window_starts(body.shape[0], roi_size[0]):
        for y in window_starts(body.shape[1], roi_size[1]):
            for z in window_starts(body.shape[2], roi_size[2]):
                tile = (slice(x, x + roi_size[0]), slice(y, y + roi_size[1]), slice(z, z + roi_size[2]))
                tiles.append((int(body[tile].sum()), tile))
    tiles.sort(key=lambda t: -t[0])
    return [tile for _, tile in tiles[:windows]]


def _pad_to(t: torch.Tensor, roi_size: Sequence[int], mode: str, value: float = 0.0) -> torch.Tensor:
    """Pad the last three dims at their end up to ``roi_size`` (``t``: (..., X, Y, Z))."""
    pad = []
    for size, roi in zip(reversed(t.shape[-3:]), reversed(roi_size)):
        pad += [0, max(0, roi - size)]
    if not any(pad):
        return t
    if mode == "replicate":
        return torch.nn.functional.pad(t[None].float(), pad, mode="replicate")[0].to(t.dtype)
    return torch.nn.functional.pad(t, pad, mode="constant", value=value)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Per voxel entropy (nats) of class probabilities along dim 0."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=0)


def _forward(network: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, pooled encoder output or None) of one pass: a SegResNet's ``encode`` then ``decode``,
    exactly its ``forward``; other networks have no encoder to pool."""
    if not (hasattr(network, "encode") and hasattr(network, "decode")):
        return network(x), None
    encoded, skips = network.encode(x)
    skips.reverse()
    return network.decode(encoded, skips), encoded.float().mean(dim=(2, 3, 4))[0]


@dataclass
class Uncertainty:
    """One study's score: ``bald`` (epistemic, the ranking key) and ``entropy`` (predictive, total)
    over ``voxels`` body voxels; per channel ``structure_entropy`` (C,) and ``structure_voxels`` (C,);
    ``features`` (the pooled encoder output, None for a network without an encoder)."""

    bald: float
    entropy: float
    voxels: int
    windows: int
    structure_entropy: torch.Tensor
    structure_voxels: torch.Tensor
    features: torch.Tensor | None


def _windows(image: torch.Tensor, hu: torch.Tensor, roi_size: Sequence[int], windows: int):
    """(padded image, body mask, real-voxel mask, tiles): the windows a study is scored on."""
    body = hu[0] > BODY_HU
    if not body.any():  # nothing above air: score the whole field of view
        body = torch.ones_like(body)
    padded = _pad_to(image, roi_size, "replicate")
    inside = _pad_to(body, roi_size, "constant", False)
    real = _pad_to(torch.ones_like(body), roi_size, "constant", False)
    return padded, inside, real, pick_windows(inside, roi_size, windows)


@torch.no_grad()
def mc_dropout_uncertainty(
    network: torch.nn.Module,
    image: torch.Tensor,
    hu: torch.Tensor,
    roi_size: Sequence[int],
    samples: int,
    windows: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Uncertainty:
    """MC dropout score of one preprocessed volume.

    Args:
        network: in MC mode (:func:`enable_mc_dropout`), on ``device``.
        image: (1, X, Y, Z) network input (the inference preprocessing's output).
        hu: (1, X, Y, Z) the same grid before intensity normalisation, in HU; picks body voxels.
        roi_size: window size (each spatial dim a multiple of the network's divisor).
        samples: passes per window (>= 2).
        windows: at most this many windows, those holding the most body voxels.
        seed: dropout masks are drawn from this seed, so a score is reproducible.

    Cost: ``samples * windows`` forward passes of ``roi_size``, whatever the volume's size.
    """
    if samples < 2:
        raise ValueError(f"MC dropout needs at least 2 samples, got {samples}")
    padded, inside, real, tiles = _windows(image, hu, roi_size, windows)

    bald_sum = entropy_sum = 0.0
    voxels = 0
    weighted = volume = counts = features = None
    with torch.random.fork_rng():  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        for tile in tiles:
            x = padded[(slice(None), *tile)][None].to(device=device, dtype=torch.float32)
            mask = inside[tile].to(device)
            mean_p = torch.zeros((), device=device)
            mean_h = torch.zeros((), device=device)
            pooled = torch.zeros((), device=device)
            for _ in range(samples):
                logits, encoded = _forward(network, x)
                p = torch.softmax(logits[0].float(), dim=0)
                mean_p = mean_p + p / samples
                mean_h = mean_h + _entropy(p) / samples
                if encoded is not None:
                    pooled = pooled + encoded / samples
            total = _entropy(mean_p)
            bald = (total - mean_h).clamp_min(0.0)
            bald_sum += float(bald[mask].sum())
            entropy_sum += float(total[mask].sum())
            voxels += int(mask.sum())

            # Per structure, over the study's own voxels (not the padding): matrix-vector
            # products, so no (C, X, Y, Z) temporary beyond mean_p itself.
            within = real[tile].to(device).flatten().float()
            flat = mean_p.flatten(1)
            tile_weighted = (flat @ (total.flatten() * within)).cpu()
            tile_volume = (flat @ within).cpu()
            tile_counts = torch.bincount(flat.argmax(0)[within > 0], minlength=flat.shape[0]).cpu()
            weighted = tile_weighted if weighted is None else weighted + tile_weighted
            volume = tile_volume if volume is None else volume + tile_volume
            counts = tile_counts if counts is None else counts + tile_counts
            if pooled.dim():
                features = pooled.cpu() / len(tiles) if features is None else features + pooled.cpu() / len(tiles)
    return Uncertainty(
        bald=bald_sum / max(voxels, 1),
        entropy=entropy_sum / max(voxels, 1),
        voxels=voxels,
        windows=len(tiles),
        structure_entropy=weighted / volume.clamp_min(1e-12),
        structure_voxels=counts,
        features=features,
    )


@torch.no_grad()
def mc_dropout_features(
    network: torch.nn.Module,
    image: torch.Tensor,
    hu: torch.Tensor,
    roi_size: Sequence[int],
    samples: int,
    windows: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> torch.Tensor:
    """The ``features`` :func:`mc_dropout_uncertainty` gives with the same arguments, from the encoder
    alone (for labelled studies, which need no score): the same windows, the same dropout masks.

    Cost: ``samples * windows`` encoder passes (the decoder and the softmax are skipped).
    """
    if not hasattr(network, "encode"):
        raise ValueError(f"{type(network).__name__} has no encoder to take features from")
    padded, _, _, tiles = _windows(image, hu, roi_size, windows)
    features = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for tile in tiles:
            x = padded[(slice(None), *tile)][None].to(device=device, dtype=torch.float32)
            pooled = sum(network.encode(x)[0].float().mean(dim=(2, 3, 4))[0] for _ in range(samples)) / samples
            features = pooled.cpu() / len(tiles) if features is None else features + pooled.cpu() / len(tiles)
    return features
