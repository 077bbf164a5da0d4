"""A model's output stored in the PACS under another tag than ``final`` (``/batch/infer``, ``python -m
lib.batch --to-pacs``) is an AUTOMATIC SEG with the tag as ContentLabel, and the datastore never takes
it for a label to train on; final labels and every other SEG still are."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from conftest import PACS_SERIES
from lib.pacs.seg import write_seg
from lib.pacs.seg_tags import content_label, is_training_label


def test_content_labels_of_tags():
    assert content_label("final") == "SEGMENTATION"
    assert content_label("original") == "ORIGINAL"
    assert content_label("batch-run.2") == "BATCH_RUN_2"
    assert content_label("segmentation") == "TAG_SEGMENTATION", "only final may read as a training label"
    assert len(content_label("a_very_long_tag_name_indeed")) == 16


@pytest.mark.parametrize("tag, automatic, training", [("final", False, True), ("original", True, False)])
def test_seg_of_a_tag(tmp_path, tag, automatic, training):
    sources = sorted(str(p) for p in PACS_SERIES.glob("*.dcm"))[:2]
    first = pydicom.dcmread(sources[0])
    labelmap = np.zeros((len(sources), int(first.Rows), int(first.Columns)), dtype=np.uint8)
    labelmap[:, 100:140, 100:140] = 5
    out = tmp_path / "seg.dcm"
    write_seg(sources, labelmap, {5: "liver"}, str(out), algorithm="MONAI Label wholebody", label_tag=tag)

    seg = pydicom.dcmread(out)
    assert seg.ContentLabel == content_label(tag)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == ("AUTOMATIC" if automatic else "SEMIAUTOMATIC")
    assert is_training_label(seg) is training


def test_segs_of_other_tools_are_training_labels():
    foreign = pydicom.Dataset()
    foreign.ManufacturerModelName, foreign.ContentLabel = "dcmqi", "ORIGINAL"
    assert is_training_label(foreign)
    assert is_training_label(pydicom.Dataset())
