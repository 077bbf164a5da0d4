"""DICOM SEG writing and reading (lib.pacs.seg), segment codes, and the PACS credentials options."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import shared_series_with_label
from lib.conf import Conf, ConfError
from lib.labels import wholebody_labels
from lib.labels.snomed import (
    ANATOMICAL_STRUCTURE,
    FINDING_CODES,
    LEFT,
    LEVEL_CODES,
    MORPHOLOGICALLY_ABNORMAL,
    RIGHT,
    SIDED_CODES,
    STRUCTURE_CODES,
    SUBSTITUTE_CODES,
    TISSUE,
    segment_codes,
)
from lib.pacs.seg import read_seg, rgb_to_dicom_lab, write_seg


def dicom_sct_codes() -> dict[str, set[str]]:
    """Every SNOMED CT code of DICOM PS3.16 as shipped with pydicom: value -> meanings."""
    from pydicom.sr._concepts_dict import concepts

    codes: dict[str, set[str]] = {}
    for entries in concepts["SCT"].values():
        for value, (meaning, _) in entries.items():
            codes.setdefault(value, set()).add(meaning.lower())
    return codes


def test_every_code_is_a_dicom_snomed_code():
    known = dicom_sct_codes()
    tables = [*STRUCTURE_CODES.values(), *SUBSTITUTE_CODES.values(), *FINDING_CODES.values(), *LEVEL_CODES.values()]
    tables += [code for sides in SIDED_CODES.values() for code in sides.values()]
    tables += [ANATOMICAL_STRUCTURE, MORPHOLOGICALLY_ABNORMAL, TISSUE, LEFT, RIGHT]
    for value, meaning in tables:
        assert value in known, f"{value} ({meaning}) is not a SNOMED CT code of DICOM PS3.16"


@pytest.mark.parametrize(
    "name, type_code, modifier",
    [
        ("spleen", "78961009", None),
        ("kidney_left", "64033007", LEFT),
        ("right kidney", "64033007", RIGHT),  # VISTA3D's spelling
        ("vertebrae_L3", "51282000", None),
        ("vertebrae C1", "14806007", None),
        ("lung_middle_lobe_right", "72481006", None),
        ("left lung upper lobe", "45653009", LEFT),
        ("heart_atrium_left", "82471001", None),
        ("rib_right_11", "113197003", RIGHT),
        ("inferior vena cava", "64131007", None),
        ("hepatic tumor", "108369006", None),
        ("left kidney cyst", "367643001", LEFT),
    ],
)
def test_segment_codes(name, type_code, modifier):
    codes = segment_codes(name)
    assert codes.type[0] == type_code
    assert codes.modifier == modifier
    finding = type_code in {v for v, _ in FINDING_CODES.values()}
    assert codes.category == (MORPHOLOGICALLY_ABNORMAL if finding else ANATOMICAL_STRUCTURE)


def test_unknown_structure_is_generic_tissue():
    codes = segment_codes("my_new_structure")
    assert codes.category == TISSUE and codes.type == TISSUE and codes.generic


def test_wholebody_structures_have_standard_codes():
    generic = sorted(name for name in wholebody_labels() if segment_codes(name).generic)
    assert generic == ["heart_myocardium", "portal_vein_and_splenic_vein"]


def test_cielab_of_white_and_black():
    white = rgb_to_dicom_lab((255, 255, 255))
    assert white[0] == 65535 and all(abs(c - 32896) <= 2 for c in white[1:]), white
    assert rgb_to_dicom_lab((0, 0, 0))[0] == 0


def test_seg_round_trip_on_the_shared_series(tmp_path):
    files, _, labelmap, names = shared_series_with_label()
    values = sorted(names)
    assert len(values) > 10

    out = tmp_path / "seg.dcm"
    info = write_seg(files, labelmap, names, str(out), algorithm="MONAI Label wholebody", version="0.1.0")
    assert [s["value"] for s in info["segments"]] == values

    seg = pydicom.dcmread(out)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.SeriesDate and seg.SeriesTime
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == [names[v] for v in values]
    assert all(s.SegmentAlgorithmType == "SEMIAUTOMATIC" for s in seg.SegmentSequence)
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == segment_codes(str(item.SegmentLabel)).type[0]

    # highdicom, on the source instances in file order
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    numbers, segments = read_seg(str(out), uids)
    lut = np.zeros(256, dtype=np.int64)
    for segment in segments:
        lut[segment.value] = {n: v for v, n in names.items()}[segment.name]
        # the SEG's codes come back with the segment (training resolves a segment by them too)
        codes = segment_codes(segment.name)
        assert segment.code == (codes.type[0], codes.modifier[0] if codes.modifier else None)
    assert np.array_equal(lut[numbers], labelmap)

    # pydicom-seg (MONAI Label's reader), by geometry
    import pydicom_seg

    result = pydicom_seg.MultiClassReader().read(seg)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reference = reader.Execute()
    back = sitk.GetArrayFromImage(sitk.Resample(result.image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    assert np.array_equal(lut[back.astype(np.int64)], labelmap)


def _viewer_seg(tmp_path, preserved):
    """A SEG as OHIF (dcmjs) writes it: frames derived from their source instances, Spatial Locations Preserved
    left out (``None``) or stated."""
    files, _, labelmap, names = shared_series_with_label()
    write_seg(files, labelmap, names, str(tmp_path / "seg.dcm"))
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                if preserved is None:
                    del source.SpatialLocationsPreserved
                else:
                    source.SpatialLocationsPreserved = preserved
    seg.save_as(tmp_path / "viewer.dcm")
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    return str(tmp_path / "viewer.dcm"), uids, labelmap, names


def test_a_viewer_seg_that_does_not_state_spatial_locations_is_read_by_its_source_instances(tmp_path):
    path, uids, labelmap, names = _viewer_seg(tmp_path, None)
    numbers, segments = read_seg(path, uids)
    by_name = {n: v for v, n in names.items()}
    lut = np.zeros(256, dtype=np.int64)
    for segment in segments:
        lut[segment.value] = by_name[segment.name]
    assert np.array_equal(lut[numbers], labelmap)


def test_a_seg_that_says_its_spatial_locations_are_not_preserved_is_refused(tmp_path):
    path, uids, _, _ = _viewer_seg(tmp_path, "NO")
    with pytest.raises(RuntimeError, match="spatial locations"):
        read_seg(path, uids)


def test_manual_label_and_empty_label(tmp_path):
    files, _, labelmap, _ = shared_series_with_label()
    out = tmp_path / "manual.dcm"
    write_seg(files, (labelmap == 5).astype(np.uint8) * 7, {}, str(out))
    seg = pydicom.dcmread(out)
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Segment 7" and segment.SegmentAlgorithmType == "MANUAL"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == TISSUE[0]
    with pytest.raises(ValueError, match="empty"):
        write_seg(files, np.zeros_like(labelmap), {}, str(tmp_path / "empty.dcm"))
    with pytest.raises(ValueError, match="does not match"):
        write_seg(files, labelmap[:5], {}, str(tmp_path / "short.dcm"))


def test_credentials_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from lib.pacs.setup import read_credentials

    for key in ("DICOMWEB", "DATASTORE"):
        monkeypatch.setattr(f"monailabel.config.settings.MONAI_LABEL_{key}_USERNAME", "")
        monkeypatch.setattr(f"monailabel.config.settings.MONAI_LABEL_{key}_PASSWORD", "")
    assert read_credentials(Conf({})) is None

    monkeypatch.setattr("monailabel.config.settings.MONAI_LABEL_DICOMWEB_USERNAME", "radiology")
    with pytest.raises(ConfError, match="both"):
        read_credentials(Conf({}))
    monkeypatch.setattr("monailabel.config.settings.MONAI_LABEL_DICOMWEB_PASSWORD", "from-env")
    assert read_credentials(Conf({})) == ("radiology", "from-env")

    secret = tmp_path / "pacs.credentials"
    secret.write_text("reader:pa:ss\n")
    os.chmod(secret, 0o600)
    assert read_credentials(Conf({"dicomweb_credentials": str(secret)})) == ("reader", "pa:ss")
    secret.write_text("no separator\n")
    with pytest.raises(ConfError, match="user:password"):
        read_credentials(Conf({"dicomweb_credentials": str(secret)}))
    with pytest.raises(ConfError, match="cannot read"):
        read_credentials(Conf({"dicomweb_credentials": str(tmp_path / "missing")}))
