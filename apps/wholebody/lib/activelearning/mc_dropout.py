"""Epistemic uncertainty of a segmentation network by Monte Carlo dropout, on a bounded input.

Pure tensor code, apart from MONAI Label: the scoring method (``lib/activelearning/scoring.py``)
and the simulated annotation study (``bench/``) both call it.

The score of a study is the mean BALD mutual information (Houlsby et al. 2011; Gal et al. 2017)
over the body voxels of at most ``windows`` windows of ``roi_size``::

    p_t = softmax(net_t(x))            one pass with dropout active, t = 1..T   (C, X, Y, Z)
    BALD = H(mean_t p_t) - mean_t H(p_t)    per voxel, in nats, >= 0

It is high where the passes disagree (the model does not know), and low both where the model is
sure and where it is consistently unsure between classes (aleatoric, e.g. at a boundary).
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


@dataclass
class Uncertainty:
    """One study's score: ``bald`` (epistemic, the ranking key) and ``entropy`` (predictive, total)."""

    bald: float
    entropy: float
    voxels: int
    windows: int


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
    body = hu[0] > BODY_HU
    if not body.any():  # nothing above air: score the whole field of view
        body = torch.ones_like(body)
    padded = _pad_to(image, roi_size, "replicate")
    inside = _pad_to(body, roi_size, "constant", False)
    tiles = pick_windows(inside, roi_size, windows)

    bald_sum = entropy_sum = 0.0
    voxels = 0
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for tile in tiles:
            x = padded[(slice(None), *tile)][None].to(device=device, dtype=torch.float32)
            mask = inside[tile].to(device)
            mean_p = torch.zeros((), device=device)
            mean_h = torch.zeros((), device=device)
            for _ in range(samples):
                p = torch.softmax(network(x)[0].float(), dim=0)
                mean_p = mean_p + p / samples
                mean_h = mean_h + _entropy(p) / samples
            total = _entropy(mean_p)
            bald = (total - mean_h).clamp_min(0.0)
            bald_sum += float(bald[mask].sum())
            entropy_sum += float(total[mask].sum())
            voxels += int(mask.sum())
    finally:
        torch.random.set_rng_state(generator_state)
    return Uncertainty(bald=bald_sum / max(voxels, 1), entropy=entropy_sum / max(voxels, 1), voxels=voxels, windows=len(tiles))
