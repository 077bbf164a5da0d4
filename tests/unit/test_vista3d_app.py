"""The VISTA3D app pieces without a server: names and label mappings, learned classes, request parsing,
grid-placed point windows and head-ready cached features (on a tiny VISTA3D built from monai's classes,
compared bitwise with monai's own inferers), the preprocessed-image cache."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from monai.apps.vista3d.inferer import point_based_window_inferer
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInfererAdapt
from vista3d_testing import pts, same, tiny_vista3d

from conftest import CT
from lib.infers.vista3d import parse_label_prompt
from lib.labels.saved import Segment
from lib.trainers.vista3d import MapLabelsd, parse_patch_size
from lib.vista3d.classes import (
    LearnedClasses,
    class_id_for_name,
    label_mapping_for,
    parse_label_mapping,
    table_labels,
    write_learned_classes,
)
from lib.vista3d.grid_inferer import GridPointWindowInferer, grid_window
from lib.vista3d.prompts import PromptError
from lib.vista3d.runtime import PreprocessedImage, PreprocessedImageCache, file_identity


# ------------------------------------------------------------------ names and mappings
def test_table_labels_are_the_class_table_without_background():
    labels = table_labels()
    assert len(labels) == 132 and labels["liver"] == 1 and labels["airway"] == 132 and "background" not in labels


@pytest.mark.parametrize(
    "name, cid",
    [
        ("liver", 1),
        ("Liver ", 1),
        ("kidney_left", 14),
        ("Left Kidney", 14),
        ("lung_middle_lobe_right", 31),
        ("rib_right_3", 77),
        ("vertebrae_L5", 33),
        ("urinary_bladder", 15),
        ("iliac_artery_left", 58),
        ("Segment_1", None),
        ("", None),
        (None, None),
    ],
)
def test_class_id_for_name(name, cid):
    assert class_id_for_name(name) == cid


def test_class_id_for_name_knows_learned_classes():
    assert class_id_for_name("My_Tumour", {"my tumour": 140}) == 140
    assert class_id_for_name("liver", {"my tumour": 140}) == 1


def test_parse_label_mapping():
    assert parse_label_mapping(None) is None and parse_label_mapping("") is None and parse_label_mapping([]) is None
    assert parse_label_mapping("[[2, 133], [1, 1]]") == [(1, 1), (2, 133)]
    assert parse_label_mapping([["1", "6"]]) == [(1, 6)]
    assert parse_label_mapping({"1": 6}) == [(1, 6)]
    for bad, words in [
        ("[[1, 1", "JSON"),
        ([[0, 1]], "local value"),
        ([[1, 0]], "global id"),
        ([[1, 255]], "global id"),
        ([[1, 2, 3]], "[local value, global id]"),
        ([[1, 1], [1, 3]], "twice"),
        ([["a", 1]], "integers"),
    ]:
        with pytest.raises(PromptError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_label_mapping(bad)


def segments(names: dict) -> list[Segment]:
    return [Segment(name, value) for name, value in names.items()]


def test_label_mapping_by_names_reuses_known_ids_and_allocates_new_ones():
    mapping, new = label_mapping_for(segments({"liver": 1, "my organ": 2, "kidney_left": 3, "background": 0}), learned={})
    assert mapping == [(1, 1, 0), (2, 133, 0), (3, 14, 0)] and new == {"my organ": 133}
    mapping, new = label_mapping_for(segments({"My Organ": 1, "other": 2}), learned={"my organ": 133}, reserved=[134])
    assert mapping == [(1, 133, 0), (2, 135, 0)] and new == {"other": 135}


def test_label_mapping_of_a_layered_label_keeps_each_layer():
    layered = [Segment("Liver", 1, layer=0), Segment("Kidney (left)", 1, layer=1), Segment("spleen", 2, layer=1)]
    mapping, new = label_mapping_for(layered, learned={})
    assert mapping == [(1, 1, 0), (1, 14, 1), (2, 3, 1)] and new == {}


def test_explicit_label_mapping_names_new_ids_from_the_segments():
    mapping, new = label_mapping_for(segments({"liver": 1, "thing": 2}), learned={}, explicit=[(1, 1), (2, 200)])
    assert mapping == [(1, 1, -1), (2, 200, -1)] and new == {"thing": 200}
    _, new = label_mapping_for([], learned={}, explicit=[(3, 150)])
    assert new == {"class 150": 150}
    _, new = label_mapping_for(segments({"x": 1}), learned={"old": 150}, explicit=[(1, 150)])
    assert new == {}  # an id learned before keeps its name


def test_learned_classes_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "vista3d_classes.json"
    learned = LearnedClasses(str(path))
    assert learned.get() == {}
    write_learned_classes(str(path), {"b": 134, "a": 133})
    assert learned.get() == {"a": 133, "b": 134}
    assert list(json.loads(path.read_text())) == ["a", "b"]  # sorted by id
    time.sleep(0.01)
    write_learned_classes(str(path), {"a": 133, "b": 134, "c": 135})
    assert learned.get()["c"] == 135
    assert [p.name for p in tmp_path.iterdir()] == ["vista3d_classes.json"]  # no temp file left


@pytest.mark.parametrize(
    "value, parsed",
    [
        (None, None),
        ("everything", None),
        (" Everything ", None),
        ("", None),
        (["everything"], None),
        ("liver, 3", ["liver", "3"]),
        ("[1, 3]", [1, 3]),
        ([1, "spleen"], [1, "spleen"]),
        (5, 5),
    ],
)
def test_parse_label_prompt(value, parsed):
    assert parse_label_prompt(value) == parsed


def test_parse_patch_size():
    assert parse_patch_size(64) == (64, 64, 64)
    assert parse_patch_size("128,128,96") == (128, 128, 96)
    assert parse_patch_size([96, 96, 64]) == (96, 96, 64)
    for bad in ("70", "16", "64,64", "abc"):
        with pytest.raises(ValueError):
            parse_patch_size(bad)


def test_map_labels_maps_and_zeroes_the_rest():
    label = MetaTensor(torch.tensor([[[[0, 1, 2, 3, 7]]]], dtype=torch.float32), affine=torch.eye(4) * 2)
    out = MapLabelsd(keys="label", mapping_key="m")({"label": label, "m": json.dumps([[1, 1], [2, 133]])})["label"]
    assert out.tolist() == [[[[0, 1, 133, 0, 0]]]]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, label.affine)


def test_map_labels_maps_each_layer_by_its_own_entries():
    label = MetaTensor(torch.tensor([[[[0, 1, 2]]], [[[1, 1, 2]]]], dtype=torch.float32))
    out = MapLabelsd(keys="label", mapping_key="m")({"label": label, "m": json.dumps([[1, 1, 0], [1, 14, 1], [2, 3, -1]])})["label"]
    assert out.tolist() == [[[[0, 1, 3]]], [[[14, 14, 3]]]]


# ------------------------------------------------------------------ windows on a grid
def test_grid_window_contains_the_point_near_its_centre():
    for size in (128, 150, 243, 400):
        for p in np.linspace(0.5, size - 1, 97):
            lo, hi = grid_window(p, 128, size, 64)
            assert hi - lo == 128 and 0 <= lo and hi <= size
            assert lo < p < hi
            if size > 128:
                assert lo % 64 == 0 or lo == size - 128
                assert abs(lo + 64 - p) <= 32 or lo in (0, size - 128)
    assert grid_window(10.0, 128, 100, 64) == (0, 128)  # padded axis: the one window


@pytest.mark.parametrize("class_vector", [None, torch.tensor([[3]]), torch.tensor([[140]])])
def test_exact_placement_and_head_ready_cache_equal_monai(class_vector):
    net, image, roi = tiny_vista3d(), torch.rand(1, 1, 40, 36, 20), (32, 32, 32)
    points, labels = pts((10, 10, 5), (30, 20, 12)), torch.tensor([[1, 0]])
    inf = GridPointWindowInferer(roi_size=roi, cache_bytes=1 << 30, window_grid=0)
    with torch.no_grad():
        reference = point_based_window_inferer(
            image, roi, net, points, labels, class_vector=class_vector, prompt_class=class_vector, transpose=True, with_coord=True
        )
        first = inf.point_window(net, image, points, labels, image_key="a", class_vector=class_vector, prompt_class=class_vector)
        runs = inf.encoder_runs
        again = inf.point_window(net, image, points, labels, image_key="a", class_vector=class_vector, prompt_class=class_vector)
    assert same(first, reference) and same(again, reference)
    assert inf.encoder_runs == runs and inf.cache_hits >= 2


def test_head_ready_cache_equals_monai_sliding_window():
    net, image, roi = tiny_vista3d(), torch.rand(1, 1, 40, 36, 20), (32, 32, 32)
    class_vector = torch.tensor([[3], [5], [150]])
    inf = GridPointWindowInferer(roi_size=roi, cache_bytes=1 << 30, window_grid=0)
    with torch.no_grad():
        reference = SlidingWindowInfererAdapt(roi_size=roi, sw_batch_size=1, with_coord=True, padding_mode="replicate")(
            image, net, transpose=True, class_vector=class_vector
        )
        ours = inf.sliding_window(net, image, class_vector, image_key="a")
        runs = inf.encoder_runs
        other = inf.sliding_window(net, image, class_vector[:1], image_key="a")  # other classes: heads only
        reference_other = SlidingWindowInfererAdapt(roi_size=roi, sw_batch_size=1, with_coord=True, padding_mode="replicate")(
            image, net, transpose=True, class_vector=class_vector[:1]
        )
    assert same(ours, reference)
    assert inf.encoder_runs == runs and same(other, reference_other)


def test_grid_placement_equals_monai_when_the_image_fits_one_window():
    net, image, roi = tiny_vista3d(), torch.rand(1, 1, 30, 28, 20), (32, 32, 32)
    points, labels = pts((5, 6, 7), (25, 20, 12)), torch.tensor([[1, 0]])
    inf = GridPointWindowInferer(roi_size=roi, cache_bytes=1 << 30, window_grid=16)
    with torch.no_grad():
        reference = point_based_window_inferer(image, roi, net, points, labels, transpose=True, with_coord=True)
        ours = inf.point_window(net, image, points, labels, image_key="a")
    assert same(ours, reference) and inf.encoder_runs == 1


def test_nearby_clicks_share_a_grid_window():
    net, image, roi = tiny_vista3d(), torch.rand(1, 1, 96, 96, 40), (32, 32, 32)
    inf = GridPointWindowInferer(roi_size=roi, cache_bytes=1 << 30, window_grid=16)
    with torch.no_grad():
        first = inf.point_window(net, image, pts((50, 50, 15)), torch.tensor([[1]]), image_key="a")
        assert inf.encoder_runs == 1
        second = inf.point_window(net, image, pts((50, 50, 15), (54, 47, 13)), torch.tensor([[1, 0]]), image_key="a")
        # monai centres a second window on the second click; on the grid both clicks fall in one window
    assert inf.encoder_runs == 1 and inf.cache_hits == 1 and inf.head_reuses == 1
    inside = ~torch.isnan(second)
    assert inside.any() and not inside.all() and torch.equal(inside, ~torch.isnan(first))
    with torch.no_grad():
        inf.point_window(net, image, pts((50, 50, 15), (85, 85, 30)), torch.tensor([[1, 0]]), image_key="a")
    assert inf.encoder_runs == 2  # a click far away needs its own window


def test_a_later_click_joins_an_earlier_window_across_a_grid_boundary():
    inf = GridPointWindowInferer(roi_size=(128, 128, 128), window_grid=64)
    size = [243, 199, 128]
    chosen: list = []
    first = inf.window_for([150.0, 110.0, 30.0], size, chosen)
    assert first == ((64, 192), (64, 192), (0, 128))
    # on its own this click's grid window starts at 115 (nearest centre); inside the first window it joins it
    assert inf.window_for([160.0, 100.0, 32.0], size, []) == ((115, 243), (64, 192), (0, 128))
    assert inf.window_for([160.0, 100.0, 32.0], size, chosen) == first
    assert inf.window_for([170.0, 100.0, 32.0], size, chosen) == ((115, 243), (64, 192), (0, 128))  # 22 from the edge
    assert inf.window_for([10.0, 100.0, 2.0], size, chosen) == ((0, 128), (64, 192), (0, 128))
    assert len(chosen) == 3


def test_grid_step_must_fit_the_roi():
    with pytest.raises(ValueError):
        GridPointWindowInferer(roi_size=(32, 32, 32), window_grid=48)


# ------------------------------------------------------------------ preprocessed images
def _item(key, nbytes):
    return PreprocessedImage(image=None, compose=None, original_shape=(1, 1, 1), original_affine=np.eye(4), key=key, nbytes=nbytes)


def test_preprocessed_image_cache_is_lru_by_bytes():
    cache = PreprocessedImageCache(max_bytes=100)
    cache.put(_item(("a",), 40))
    cache.put(_item(("b",), 40))
    assert cache.get(("a",)) is not None  # a is now the most recent
    cache.put(_item(("c",), 40))
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",))
    cache.put(_item(("huge",), 500))
    assert cache.get(("huge",)) is None
    assert cache.stats()["evictions"] == 1 and cache.stats()["nbytes"] == 80


def test_file_identity_changes_when_the_file_is_rewritten(tmp_path):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"one")
    first = file_identity(str(path))
    assert first == file_identity(str(path))
    path.write_bytes(b"other")
    assert file_identity(str(path)) != first
    os.utime(path, ns=(first[1], first[1]))
    assert file_identity(str(path)) != first  # same mtime, other size


# ------------------------------------------------------------------ the trainer, end to end on a tiny network
SEG = CT.parent / "example_ct_sm_totalseg_v2.nii.gz"


@pytest.mark.parametrize("val_split", [0.0, 0.5])
def test_trainer_maps_labels_trains_validates_and_publishes(tmp_path, val_split):
    """The whole MONAI Label training run (prompt sampling, loss, validation, publishing) with a tiny VISTA3D:
    two saved labels named by Slicer, mapped by name (liver -> 1, a new name -> 133)."""
    import nibabel as nib
    from monailabel.datastore.local import LocalDatastore

    from lib.conf import Conf
    from lib.trainers.vista3d import Vista3DTrainer
    from lib.weights.official import OfficialCheckpoint

    studies, model_dir = tmp_path / "studies", tmp_path / "model"
    studies.mkdir()
    ct, seg = nib.load(str(CT)), np.asarray(nib.load(str(SEG)).dataobj)
    datastore = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    for n, (x, y) in enumerate([(48, 30), (64, 40)]):
        crop = (slice(x, x + 32), slice(y, y + 32), slice(5, 25))
        nib.save(ct.slicer[crop], str(studies / f"ct{n}.nii.gz"))
        label = np.zeros(seg[crop].shape, np.uint8)
        label[seg[crop] == 5] = 1  # liver
        label[seg[crop] == 2] = 2  # right kidney, under a new name
        label[:4, :4, :4] = 2
        label_file = tmp_path / f"label{n}.nii.gz"
        nib.save(nib.Nifti1Image(label, ct.slicer[crop].affine), str(label_file))
    datastore.refresh()
    for n in range(2):
        datastore.save_label(
            f"ct{n}", str(tmp_path / f"label{n}.nii.gz"), "final",
            {"label_info": [{"name": "liver", "idx": 1}, {"name": "new thing", "idx": 2}]},
        )
    checkpoint = OfficialCheckpoint("vista3d", str(model_dir), Conf({"download_weights": "false"}), str(model_dir / "vista3d.pt"))
    trainer = Vista3DTrainer(
        model_dir=str(model_dir / "train" / "vista3d"),
        network_factory=tiny_vista3d,
        checkpoint=checkpoint,
        classes_path=str(model_dir / "vista3d_classes.json"),
        pixdim=(1.5, 1.5, 1.5),
        hu_window=(-963.8247715525971, 1053.678477684517),
        crop_margin=10,
        roi_size=(128, 128, 128),
        overlap=0.25,
        max_epochs=2,
        val_split=0.2,
    )
    stats = trainer({"patch_size": 32, "val_split": val_split, "drop_point_prob": 0.5, "dataset": "Dataset"}, datastore)
    assert stats["total_time"]
    assert (model_dir / "vista3d.pt").exists()
    assert json.loads((model_dir / "vista3d_classes.json").read_text()) == {"new thing": 133}
    state = torch.load(model_dir / "vista3d.pt", weights_only=True)
    assert set(state) == set(tiny_vista3d().state_dict())
    if val_split:
        assert "val_mean_dice" in json.dumps(stats)
