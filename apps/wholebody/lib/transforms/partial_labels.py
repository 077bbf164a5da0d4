"""Saved labels to model channels, recording which channels a label actually annotates.

A label has one layer, or several when overlapping segments were saved in a Slicer ``.seg.nrrd``:
(layers, *spatial) label maps, each value of each layer one segment. After ``PartialLabelsd`` every
layer holds channel indices of the model; ``PartialLabelDiceCELoss`` and ``LayersToMultiHotd`` read
all layers, so a voxel in two overlapping structures trains both.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from lib.labels.names import NameResolver
from lib.labels.saved import Segment

ANNOTATED_KEY = "annotated_classes"
SEGMENTS_KEY = "segments"
MAX_VALUE = 255


def value_table(segments: Sequence[Segment], resolver: NameResolver, layers: int) -> torch.Tensor:
    """(layers, 256) lookup: a layer's value -> the model's channel (0 for a segment it does not have)."""
    table = torch.zeros(layers, MAX_VALUE + 1, dtype=torch.long)
    for segment in segments:
        channel = resolver.channel(segment.name, segment.code)
        if channel and segment.layer < layers and 0 < segment.value <= MAX_VALUE:
            table[segment.layer, segment.value] = channel
    return table


class PartialLabelsd(MapTransform):
    """Maps a saved label's values to this model's channels by segment (names through the model's
    ``NameResolver``) and stores, in the label's meta, a (num_classes,) bool vector of the channels
    it annotates.

    Annotators label some structures, not all 104: a channel counts as annotated only where its
    structure appears in the label, and the loss (``PartialLabelDiceCELoss``) does not teach
    unannotated channels as background. Without segments (labels written by our own infer tasks
    and saved with no names), values are taken as channel indices.
    """

    def __init__(self, keys, channels: dict[str, int], num_classes: int, segments_key: str = SEGMENTS_KEY):
        super().__init__(keys)
        self.resolver = NameResolver(channels)
        self.num_classes = num_classes
        self.segments_key = segments_key

    def __call__(self, data):
        d = dict(data)
        # Popped: lists that differ between samples cannot be collated into a batch.
        segments = d.pop(self.segments_key, None) or []
        for key in self.key_iterator(d):
            label = d[key]
            raw = torch.as_tensor(label)
            if segments:
                table = value_table(segments, self.resolver, raw.shape[0]).to(raw.device)
                index = raw.round().long().clamp(0, MAX_VALUE)
                mapped = torch.stack([table[layer][index[layer]] for layer in range(raw.shape[0])])
            else:
                mapped = torch.where(raw < self.num_classes, raw, 0).long()
            out = label.clone() if isinstance(label, MetaTensor) else MetaTensor(raw.clone())
            out.copy_(mapped.to(out.dtype))  # keeps the affine and meta
            present = torch.bincount(mapped.flatten().cpu(), minlength=self.num_classes)[: self.num_classes] > 0
            present[0] = True
            out.meta[ANNOTATED_KEY] = present.numpy()
            d[key] = out
        return d


def multi_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, layers, *spatial) channel indices -> (B, num_classes, *spatial) 0/1: a channel is on where
    any layer has it; background only where every layer is 0. One layer: plain one-hot."""
    labels = labels.long()
    shape = (labels.shape[0], num_classes, *labels.shape[2:])
    hot = torch.zeros(shape, dtype=torch.bool, device=labels.device)
    for layer in range(labels.shape[1]):
        hot.scatter_(1, labels[:, layer : layer + 1], True)
    hot[:, 0] = ~hot[:, 1:].any(1)
    return hot.float()


class LayersToMultiHotd(MapTransform):
    """A (layers, *spatial) label of channel indices -> (num_classes, *spatial) multi-hot (for metrics)."""

    def __init__(self, keys, num_classes: int):
        super().__init__(keys)
        self.num_classes = num_classes

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            hot = multi_hot(torch.as_tensor(label)[None], self.num_classes)[0]
            d[key] = MetaTensor(hot, meta=label.meta) if isinstance(label, MetaTensor) else hot
        return d
