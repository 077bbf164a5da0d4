"""Dice + cross-entropy for partially annotated labels."""

from __future__ import annotations

import torch

from lib.transforms.partial_labels import ANNOTATED_KEY, multi_hot


class PartialLabelDiceCELoss(torch.nn.Module):
    """Marginal loss (Shi et al., "Marginal loss and exclusion loss for partially supervised
    multi-organ segmentation", 2021): the probabilities of channels a label does not annotate are
    added to background, so an unannotated structure under a background voxel costs nothing.
    With every channel annotated it is plain soft-Dice + cross-entropy.

    ``logits``: (B, C, *spatial); ``target``: (B, layers, *spatial) channel indices (one layer, or
    several for overlapping segments) whose ``meta["annotated_classes"]`` is a (B, C) bool tensor
    (all channels if absent). A voxel in several structures is the event "one of them": its
    cross-entropy term is -log of their summed probability, and each structure's Dice counts it.
    """

    def __init__(self, smooth: float = 1e-5):
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, c = logits.shape[:2]
        annotated = getattr(target, "meta", {}).get(ANNOTATED_KEY)
        annotated = torch.ones(b, c, dtype=torch.bool) if annotated is None else torch.as_tensor(annotated).bool()
        annotated = annotated.reshape(b, c).to(logits.device)
        annotated[:, 0] = True

        probs = torch.softmax(logits.float(), dim=1)
        shape = (b, c) + (1,) * (logits.ndim - 2)
        unannotated = (~annotated).reshape(shape).float()
        background = probs[:, :1] + (probs * unannotated).sum(dim=1, keepdim=True)
        merged = torch.cat([background, probs[:, 1:]], dim=1) * annotated.reshape(shape).float()
        merged[:, :1] = background

        onehot = multi_hot(torch.as_tensor(target).to(logits.device), c)
        hit = merged * onehot
        ce = -torch.log(hit.sum(dim=1).clamp_min(1e-8)).mean()

        dims = tuple(range(2, logits.ndim))
        intersection = hit.sum(dims)
        denominator = merged.sum(dims) + onehot.sum(dims)
        dice = 1.0 - (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        weights = annotated.float()
        dice = (dice * weights).sum() / weights.sum()
        return dice + ce
