"""Partial labels: name mapping, the annotated-channel record, and a loss that ignores the rest."""

from __future__ import annotations

import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import RandCropByPosNegLabeld

from lib.trainers.partial_label_loss import PartialLabelDiceCELoss
from lib.transforms.partial_labels import ANNOTATED_KEY, PartialLabelsd

CHANNELS = {"spleen": 1, "liver": 5, "aorta": 7}


def label_volume() -> MetaTensor:
    label = torch.zeros(1, 16, 16, 16, dtype=torch.uint8)
    label[0, 2:6, 2:6, 2:6] = 1  # Slicer's first segment
    label[0, 8:12, 8:12, 8:12] = 2  # a structure this model does not have
    return MetaTensor(label)


def test_segments_are_mapped_by_name_and_unknown_ones_dropped():
    out = PartialLabelsd("label", CHANNELS, num_classes=8)({"label": label_volume(), "label_names": {"Liver": 1, "tumour": 2}})
    label = out["label"]
    assert set(torch.unique(label).tolist()) == {0, 5}
    assert "label_names" not in out
    annotated = label.meta[ANNOTATED_KEY]
    assert annotated.tolist() == [True, False, False, False, False, True, False, False]


def test_without_names_values_are_channels():
    out = PartialLabelsd("label", CHANNELS, num_classes=8)({"label": label_volume()})
    assert out["label"].meta[ANNOTATED_KEY][[0, 1, 2]].tolist() == [True, True, True]


def test_annotated_record_survives_cropping_and_batching():
    data = PartialLabelsd("label", CHANNELS, num_classes=8)({"label": label_volume(), "image": torch.rand(1, 16, 16, 16)})
    crops = RandCropByPosNegLabeld(("image", "label"), "label", (8, 8, 8), num_samples=1)(data)
    batch = list_data_collate([crops[0], crops[0]])
    assert torch.as_tensor(batch["label"].meta[ANNOTATED_KEY]).shape == (2, 8)


def logits_for(channel: int, shape=(1, 8, 4, 4, 4)) -> torch.Tensor:
    logits = torch.full(shape, -10.0)
    logits[:, channel] = 10.0
    return logits


def test_unannotated_structure_is_not_taught_as_background():
    target = MetaTensor(torch.zeros(1, 1, 4, 4, 4))
    target.meta[ANNOTATED_KEY] = torch.tensor([[True, False, False, False, False, True, False, False]])
    loss = PartialLabelDiceCELoss()
    # Predicting the unannotated aorta on background voxels costs as little as predicting background...
    assert torch.isclose(loss(logits_for(7), target), loss(logits_for(0), target), atol=1e-4)
    # ...while predicting the annotated liver there is penalised.
    assert loss(logits_for(5), target) > loss(logits_for(0), target) + 5


def test_fully_annotated_label_penalises_every_wrong_channel():
    target = MetaTensor(torch.zeros(1, 1, 4, 4, 4))
    loss = PartialLabelDiceCELoss()
    assert loss(logits_for(7), target) > loss(logits_for(0), target) + 5
