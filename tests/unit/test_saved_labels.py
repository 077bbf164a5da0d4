"""A saved correction trains what the annotator meant (issue 13): each trainer finds a study with a
dotted id (a DICOMweb Series Instance UID) and maps its segments, named as Slicer and VISTA3D name
them and with values that are not the model's channels, to the right channels; seg.nrrd files are
read by their own segment table, layers included; a label off the image's grid is refused; one
label per image and tag, and a deleted one stays deleted."""

from __future__ import annotations

import json
import os

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from conftest import CT
from lib.datastore.local import CheckedLocalDatastore
from lib.heads.store import HeadError, HeadStore
from lib.labels import wholebody_labels
from lib.trainers.spleen import SpleenSegmentation
from lib.trainers.structure_head import StructureHeadTrainer
from lib.trainers.vista3d import Vista3DTrainer
from lib.trainers.wholebody import WholeBodySegmentation
from lib.transforms.partial_labels import ANNOTATED_KEY, LayersToMultiHotd
from lib.transforms.validate import InvalidImageError

DOTTED = "1.2.826.0.1.3680043.8.498.1234"
CROP = (slice(40, 72), slice(30, 62), slice(5, 25))
# Values as the annotator's tool wrote them, none equal to the model's channels.
LIVER, KIDNEY, SPLEEN, TUMOUR = 7, 9, 11, 13
SLICER_INFO = [
    {"name": "Liver", "idx": LIVER},
    {"name": "Left Kidney", "idx": KIDNEY},  # Slicer's display name
    {"name": "spleen", "idx": SPLEEN},  # VISTA3D's spelling
    {"name": "Tumour", "idx": TUMOUR},  # a structure none of the models has
]
BOXES = {LIVER: np.s_[0:10, 0:10, 0:10], KIDNEY: np.s_[12:20, 0:10, 0:10], SPLEEN: np.s_[0:10, 12:22, 0:10], TUMOUR: np.s_[20:30, 20:30, 10:20]}


@pytest.fixture
def study(tmp_path):
    """A checked datastore holding a crop of the shared CT under a dotted id."""
    ct = nib.load(str(CT)).slicer[CROP]
    image = tmp_path / "upload.nii.gz"
    nib.save(ct, str(image))
    store = CheckedLocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz", "*.nii", "*.nrrd"], auto_reload=False)
    store.add_image(DOTTED, str(image), {})
    return store, ct


def box_label(shape) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    for value, box in BOXES.items():
        label[box] = value
    return label


def save_nifti(store, ct, tmp_path, label=None, info=SLICER_INFO, name="label.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(box_label(ct.shape) if label is None else label, ct.affine), str(path))
    return store.save_label(DOTTED, str(path), "final", {"label_info": info, "client_id": "slicer"})


def lps_header(ct, **fields) -> dict:
    """A Slicer NRRD header on the image's grid (LPS)."""
    to_lps = np.diag([-1, -1, 1])
    return {
        "space": "left-posterior-superior",
        "space directions": (to_lps @ ct.affine[:3, :3]).T,
        "space origin": to_lps @ ct.affine[:3, 3],
        **fields,
    }


def trainer_args(tmp_path, name):
    return dict(
        model_dir=str(tmp_path / "train" / name),
        network_factory=lambda: torch.nn.Identity(),
        labels=wholebody_labels(),
        checkpoints={True: [str(tmp_path / "none.pt")], False: [str(tmp_path / "none.pt")]},
        highres=False,
        max_epochs=1,
        val_split=0.0,
    )


def trained_labels(trainer, store) -> torch.Tensor:
    """The label as the trainer's own data pipeline gives it to the loss (one item, dotted id)."""
    items = trainer.pre_process({}, store)
    assert [item["image_id"] for item in items] == [DOTTED]
    return Compose(trainer.val_pre_transforms(None))(items[0])["label"]


def channel_at(label: torch.Tensor, value: int) -> set[int]:
    """The channels the trainer put where the saved label had ``value`` (the crop is on a 3 mm RAS
    grid already; a trainer that pads the volume pads it evenly on both sides)."""
    shape = nib.load(str(CT)).slicer[CROP].shape
    start = [(n - s) // 2 for n, s in zip(label.shape[1:], shape)]
    layer = label[0][tuple(slice(a, a + s) for a, s in zip(start, shape))]
    return set(torch.unique(layer[torch.as_tensor(box_label(shape) == value)]).long().tolist())


# ------------------------------------------------------------------ each trainer, dotted id, Slicer names
def test_wholebody_trains_the_named_structures_of_a_dotted_study(study, tmp_path):
    store, ct = study
    save_nifti(store, ct, tmp_path)
    label = trained_labels(WholeBodySegmentation(**trainer_args(tmp_path, "wholebody")), store)
    channels = wholebody_labels()
    assert channel_at(label, LIVER) == {channels["liver"]}
    assert channel_at(label, KIDNEY) == {channels["kidney_left"]}
    assert channel_at(label, SPLEEN) == {channels["spleen"]}
    assert channel_at(label, TUMOUR) == {0}  # not one of the 104: not trained as anything
    annotated = np.flatnonzero(label.meta[ANNOTATED_KEY]).tolist()
    assert annotated == [0, channels["spleen"], channels["kidney_left"], channels["liver"]]


def test_spleen_trains_only_the_spleen(study, tmp_path):
    store, ct = study
    save_nifti(store, ct, tmp_path)
    args = trainer_args(tmp_path, "spleen")
    trainer = SpleenSegmentation(
        model_dir=args["model_dir"], network_factory=args["network_factory"], labels={"spleen": 1}, paths=[str(tmp_path / "none.pt")],
        max_epochs=1, val_split=0.0,
    )
    # Spleen resamples to 1.5 x 1.5 x 2 mm: check the mapping on the saved grid, and that resampling keeps it.
    item = trainer.pre_process({}, store)[0]
    label = Compose([LoadImaged(keys="label"), EnsureChannelFirstd(keys="label"), trainer.partial_labels()])(dict(item))["label"]
    assert channel_at(label, SPLEEN) == {1}
    assert channel_at(label, LIVER) == channel_at(label, KIDNEY) == {0}
    assert set(torch.unique(trained_labels(trainer, store)).long().tolist()) == {0, 1}


def test_structure_head_learns_only_new_structures(study, tmp_path):
    store, ct = study
    save_nifti(store, ct, tmp_path)
    trainer = StructureHeadTrainer(heads=HeadStore(str(tmp_path / "heads")), **trainer_args(tmp_path, "structures"))
    plan = trainer.plan({}, store)
    assert plan["structures"] == {"Tumour": 105} and plan["images"] == [DOTTED]
    # A "new" structure that is one of the 104, spelled another way, is refused (4xx: HeadError is a ConfError).
    for spelling, channel in (("left kidney", "kidney_left"), ("Kidney (left)", "kidney_left"), ("Liver", "liver")):
        with pytest.raises(HeadError, match=channel):
            trainer.plan({"structures": spelling}, store)
    assert trainer.plan({"structures": "tumour"}, store)["images"] == [DOTTED]
    trainer._run, trainer._channels, trainer.num_classes = plan, {"Tumour": 1}, 2
    label = trained_labels(trainer, store)
    assert channel_at(label, TUMOUR) == {1} and channel_at(label, LIVER) == {0}


def test_vista3d_maps_names_to_its_global_classes(study, tmp_path):
    from lib.conf import Conf
    from lib.weights.official import OfficialCheckpoint

    store, ct = study
    save_nifti(store, ct, tmp_path)
    model_dir = tmp_path / "model"
    trainer = Vista3DTrainer(
        model_dir=str(model_dir / "train" / "vista3d"), network_factory=lambda: torch.nn.Identity(),
        checkpoint=OfficialCheckpoint("vista3d", str(model_dir), Conf({"download_weights": "false"}), str(model_dir / "vista3d.pt")),
        classes_path=str(model_dir / "vista3d_classes.json"), pixdim=(3.0, 3.0, 3.0), hu_window=(-963.8, 1053.7),
        crop_margin=10, roi_size=(32, 32, 32), overlap=0.25, max_epochs=1, val_split=0.0,
    )
    trainer._run = {"label_mapping": None, "learned": {}, "new_classes": {}}
    items = trainer.pre_process({}, store)
    assert len(items) == 1
    mapping = {local: glob for local, glob, _ in json.loads(items[0]["label_mapping"])}
    assert mapping == {LIVER: 1, KIDNEY: 14, SPLEEN: 3, TUMOUR: 133}
    assert trainer._run["new_classes"] == {"Tumour": 133}


# ------------------------------------------------------------------ seg.nrrd: its own table, layers
def test_seg_nrrd_is_read_by_its_segment_table_not_by_list_positions(study, tmp_path):
    store, ct = study
    label = np.zeros(ct.shape, np.uint8)
    label[BOXES[SPLEEN]], label[BOXES[KIDNEY]], label[BOXES[LIVER]] = 1, 3, 5
    table = {
        "Segment0_Name": "spleen", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
        "Segment1_Name": "kidney_left", "Segment1_LabelValue": "3", "Segment1_Layer": "0",
        "Segment1_Tags": "TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^|",
        "Segment2_Name": "liver", "Segment2_LabelValue": "5", "Segment2_Layer": "0",
    }
    path = tmp_path / "label.seg.nrrd"
    nrrd.write(str(path), label, lps_header(ct, **table))
    # Slicer's label_info: list positions 1, 2, 3 (they would train kidney voxels as liver).
    slicer_info = [{"name": "spleen", "idx": 1}, {"name": "kidney_left", "idx": 2}, {"name": "liver", "idx": 3}]
    store.save_label(DOTTED, str(path), "final", {"label_info": slicer_info})
    info = store.get_label_info(DOTTED, "final")
    assert [(s["name"], s["idx"]) for s in info["label_info"]] == [("spleen", 1), ("kidney_left", 3), ("liver", 5)]
    assert info["label_info"][1]["code"] == ["64033007", "7771000"]
    assert info["client_label_info"] == slicer_info
    assert store.get_label_uri(DOTTED, "final").endswith(f"{DOTTED}.seg.nrrd")
    label = trained_labels(WholeBodySegmentation(**trainer_args(tmp_path, "wholebody")), store)
    channels = wholebody_labels()
    assert channel_at(label, KIDNEY) == {channels["kidney_left"]} and channel_at(label, LIVER) == {channels["liver"]}


def test_layered_seg_nrrd_trains_each_structure_from_its_layer(study, tmp_path):
    store, ct = study
    layers = np.zeros((2, *ct.shape), np.uint8)
    layers[0][0:12, 0:12, 0:12] = 1  # liver
    layers[1][8:20, 8:20, 8:20] = 1  # left kidney, overlapping the liver (as Slicer allows in layers)
    table = {
        "Segment0_Name": "Liver", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
        "Segment1_Name": "Left Kidney", "Segment1_LabelValue": "1", "Segment1_Layer": "1",
    }
    header = lps_header(ct, **table)
    header["space directions"] = np.vstack([np.full(3, np.nan), header["space directions"]])
    header["kinds"] = ["list", "domain", "domain", "domain"]
    path = tmp_path / "layers.seg.nrrd"
    nrrd.write(str(path), layers, header)
    store.save_label(DOTTED, str(path), "final", {"label_info": [{"name": "Liver", "idx": 1}, {"name": "Left Kidney", "idx": 2}]})
    assert store.get_label_info(DOTTED, "final")["layers"] == 2

    trainer = WholeBodySegmentation(**trainer_args(tmp_path, "wholebody"))
    label = trained_labels(trainer, store)
    assert label.shape[0] == 2
    channels = wholebody_labels()
    hot = LayersToMultiHotd("label", num_classes=105)({"label": label})["label"]
    overlap = torch.zeros(ct.shape, dtype=torch.bool)
    overlap[8:12, 8:12, 8:12] = True
    assert hot[channels["liver"]][overlap].all() and hot[channels["kidney_left"]][overlap].all()
    assert int(hot[channels["liver"]].sum()) == 12**3 and int(hot[channels["kidney_left"]].sum()) == 12**3


# ------------------------------------------------------------------ geometry
def test_label_off_the_image_grid_is_refused_naming_both_geometries(study, tmp_path):
    store, ct = study
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    path = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(box_label(ct.shape), affine), str(path))
    with pytest.raises(InvalidImageError) as refused:
        store.save_label(DOTTED, str(path), "final", {"label_info": SLICER_INFO})
    message = str(refused.value)
    assert "spacing (0.8, 0.8, 5.0)" in message and "spacing (3.0, 3.0, 3.0)" in message and "origin" in message
    assert store.get_label_uri(DOTTED, "final") == ""  # nothing saved
    # Rounding in a header (far below a voxel) is not a different grid.
    nib.save(nib.Nifti1Image(box_label(ct.shape), ct.affine + 1e-4), str(path))
    store.save_label(DOTTED, str(path), "final", {"label_info": SLICER_INFO})
    assert store.get_label_uri(DOTTED, "final")


# ------------------------------------------------------------------ one label per study and tag
def test_a_deleted_label_does_not_come_back_after_a_format_change(study, tmp_path):
    store, ct = study
    save_nifti(store, ct, tmp_path)
    path = tmp_path / "label.nrrd"
    nrrd.write(str(path), box_label(ct.shape), lps_header(ct))
    store.save_label(DOTTED, str(path), "final", {"label_info": SLICER_INFO})
    final = os.path.dirname(store.get_label_uri(DOTTED, "final"))
    assert sorted(f for f in os.listdir(final) if f != "history") == [f"{DOTTED}.nrrd"]  # the .nii.gz went to history
    store.remove_label(DOTTED, "final")
    assert store.get_label_uri(DOTTED, "final") == ""
    reopened = CheckedLocalDatastore(store._datastore_path, extensions=["*.nii.gz", "*.nii", "*.nrrd"], auto_reload=False)
    assert reopened.get_label_uri(DOTTED, "final") == "" and reopened.datalist() == []
    assert len(os.listdir(os.path.join(final, "history"))) == 2  # both versions kept, neither served
