"""One label map from the base model's argmax and each head's argmax."""

from __future__ import annotations

from typing import Sequence

import torch

#: who keeps a voxel that the 104-class model and a new structure both claim
OVERLAP_RULES = ("new", "existing")


class MergedArgmax:
    """``reduce`` for :class:`StreamingArgmaxInferer` over the logits of :class:`HeadedSegResNet`.

    The base label is the argmax of the first ``base_channels`` logits, exactly as without heads.
    Each head's argmax (background = 0) marks its structures, written with their label values where
    the rule allows: ``new`` (a new structure wins over the 104, e.g. a tumour inside the liver) or
    ``existing`` (a new structure only fills voxels that the 104-class model calls background).
    Heads are applied in order, so a later head wins over an earlier one.
    """

    def __init__(self, base_channels: int, head_values: Sequence[Sequence[int]], overlap: str):
        if overlap not in OVERLAP_RULES:
            raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}")
        self.base_channels = base_channels
        self.overlap = overlap
        # per head: its channel range and a lookup from its argmax (0 = background) to label values
        self.heads = []
        start = base_channels
        for values in head_values:
            lookup = torch.tensor([0, *values], dtype=torch.long)
            self.heads.append((start, start + len(lookup), lookup))
            start += len(lookup)
        self.n_channels = start

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] != self.n_channels:
            raise ValueError(f"expected {self.n_channels} channels (base and heads), got {logits.shape[0]}")
        labels = torch.argmax(logits[: self.base_channels], dim=0)
        for start, stop, lookup in self.heads:
            found = torch.argmax(logits[start:stop], dim=0)
            claim = found > 0
            if self.overlap == "existing":
                claim &= labels == 0
            labels = torch.where(claim, lookup.to(found.device)[found], labels)
        return labels
