"""Saved labels to model channels, recording which channels a label actually annotates."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.transforms import MapLabelValue, MapTransform

ANNOTATED_KEY = "annotated_classes"


def normalise_name(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


class PartialLabelsd(MapTransform):
    """Maps a saved label's values to this model's channels by segment name and stores, in the
    label's meta, a (num_classes,) bool vector of the channels it annotates.

    Annotators label some structures, not all 104: a channel counts as annotated only where its
    structure appears in the label, and the loss (``PartialLabelDiceCELoss``) does not teach
    unannotated channels as background. Without names (labels written by our own infer tasks),
    values are taken as channel indices.
    """

    def __init__(self, keys, channels: dict[str, int], num_classes: int, names_key: str = "label_names"):
        super().__init__(keys)
        self.channels = {normalise_name(k): v for k, v in channels.items()}
        self.num_classes = num_classes
        self.names_key = names_key

    def __call__(self, data):
        d = dict(data)
        # Popped: dicts that differ between samples cannot be collated into a batch.
        names = d.pop(self.names_key, None) or {}
        for key in self.key_iterator(d):
            label = d[key]
            if names:
                pairs = [(int(v), self.channels[normalise_name(n)]) for n, v in names.items() if normalise_name(n) in self.channels]
                orig = [v for v, _ in pairs]
                known = MapLabelValue(orig_labels=orig, target_labels=[c for _, c in pairs])(label)
                # MapLabelValue keeps unmapped values: zero them, they are structures this model lacks.
                keep = torch.zeros_like(torch.as_tensor(label), dtype=torch.bool)
                for v in orig:
                    keep |= torch.as_tensor(label) == v
                label = known * keep
            else:
                label = torch.where(torch.as_tensor(label) < self.num_classes, torch.as_tensor(label), 0)
            label = label if isinstance(label, MetaTensor) else MetaTensor(label, meta=getattr(d[key], "meta", {}))
            present = torch.bincount(label.flatten().long(), minlength=self.num_classes)[: self.num_classes] > 0
            present[0] = True
            label.meta[ANNOTATED_KEY] = present.numpy()
            d[key] = label
        return d
