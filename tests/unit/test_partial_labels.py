"""Partial labels: name mapping, layers of overlapping segments, the annotated-channel record, and a
loss that ignores the rest."""

from __future__ import annotations

import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import RandCropByPosNegLabeld

from lib.labels.saved import Segment
from lib.trainers.partial_label_loss import PartialLabelDiceCELoss
from lib.transforms.partial_labels import ANNOTATED_KEY, LayersToMultiHotd, PartialLabelsd

CHANNELS = {"spleen": 1, "liver": 5, "aorta": 7}


def label_volume() -> MetaTensor:
    label = torch.zeros(1, 16, 16, 16, dtype=torch.uint8)
    label[0, 2:6, 2:6, 2:6] = 1  # Slicer's first segment
    label[0, 8:12, 8:12, 8:12] = 2  # a structure this model does not have
    return MetaTensor(label)


def test_segments_are_mapped_by_name_and_unknown_ones_dropped():
    segments = [Segment("Liver", 1), Segment("tumour", 2)]
    out = PartialLabelsd("label", CHANNELS, num_classes=8)({"label": label_volume(), "segments": segments})
    label = out["label"]
    assert set(torch.unique(label).tolist()) == {0, 5}
    assert "segments" not in out
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


def test_names_are_resolved_as_slicer_and_vista3d_spell_them():
    channels = {"kidney_left": 3, "liver": 5, "urinary_bladder": 104}
    label = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
    label[0, 0:2], label[0, 2:4], label[0, 4:6] = 7, 9, 11
    segments = [Segment("Left Kidney", 7), Segment("bladder", 9), Segment("Segment_3", 11, code=("10200004", None))]
    out = PartialLabelsd("label", channels, num_classes=105)({"label": MetaTensor(label), "segments": segments})["label"]
    assert out[0, 0].unique().tolist() == [3] and out[0, 2].unique().tolist() == [104]
    assert out[0, 4].unique().tolist() == [5]  # unnamed, but its SNOMED code says liver


def layered_label() -> MetaTensor:
    """Two layers: liver (value 1 of layer 0) and a tumour overlapping it (value 1 of layer 1)."""
    label = torch.zeros(2, 8, 8, 8, dtype=torch.uint8)
    label[0, 0:6] = 1
    label[1, 4:8] = 1
    return MetaTensor(label)


def test_each_layer_is_mapped_with_its_own_segments():
    channels = {"liver": 5, "tumour": 7}
    segments = [Segment("liver", 1, layer=0), Segment("Tumour", 1, layer=1)]
    out = PartialLabelsd("label", channels, num_classes=8)({"label": layered_label(), "segments": segments})["label"]
    assert out.shape == (2, 8, 8, 8)
    assert out[0, 0:6].unique().tolist() == [5] and out[1, 4:8].unique().tolist() == [7]
    assert out.meta[ANNOTATED_KEY].tolist() == [True, False, False, False, False, True, False, True]
    hot = LayersToMultiHotd("label", num_classes=8)({"label": out})["label"]
    assert hot.shape == (8, 8, 8, 8)
    assert hot[5, 4:6].all() and hot[7, 4:6].all()  # the overlap is both structures
    assert not hot[0, 4:6].any() and hot[0, 6:8].sum() == 0 and hot[0].sum() == 0
    assert torch.equal(hot.sum(0), torch.ones(8, 8, 8) + (hot[5] * hot[7]))


def test_overlap_costs_nothing_when_either_structure_is_predicted():
    target = MetaTensor(torch.stack([torch.full((4, 4, 4), 5.0), torch.full((4, 4, 4), 7.0)])[None])
    loss = PartialLabelDiceCELoss()
    # Cross-entropy of an overlap voxel is -log(p(liver) + p(tumour)): either one is right.
    both = torch.full((1, 8, 4, 4, 4), -10.0)
    both[:, 5] = both[:, 7] = 10.0
    assert loss(both, target) < loss(logits_for(5), target) < loss(logits_for(0), target)
    assert loss(logits_for(0), target) > loss(logits_for(5), target) + 5


def test_one_layer_gives_the_loss_of_a_plain_label_map():
    label = torch.randint(0, 8, (2, 1, 4, 4, 4))
    logits = torch.randn(2, 8, 4, 4, 4)
    loss = PartialLabelDiceCELoss()(logits, MetaTensor(label.float()))
    ce = torch.nn.functional.cross_entropy(logits, label[:, 0])
    onehot = torch.nn.functional.one_hot(label[:, 0], 8).movedim(-1, 1).float()
    probs = torch.softmax(logits, 1)
    dice = 1 - (2 * (probs * onehot).sum((2, 3, 4)) + 1e-5) / (probs.sum((2, 3, 4)) + onehot.sum((2, 3, 4)) + 1e-5)
    assert torch.isclose(loss, ce + dice.mean(), atol=1e-4)
