"""One name resolver per model (lib.labels.names): Slicer, OHIF, TotalSegmentator v1/v2, VISTA3D and
SNOMED CT spellings of a structure map to the model's channel; generic codes never do."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED
from lib.labels import wholebody_labels
from lib.labels.names import NameResolver, name_code
from lib.vista3d.classes import class_id_for_name, table_labels, vista3d_resolver

WHOLEBODY = NameResolver(wholebody_labels())
TOTALSEGMENTATOR = json.loads((SHARED / "labels" / "totalsegmentator_classes.json").read_text())


@pytest.mark.parametrize(
    "name, structure",
    [
        ("left kidney", "kidney_left"),
        ("Left Kidney", "kidney_left"),
        ("kidney left", "kidney_left"),
        ("Kidney (left)", "kidney_left"),
        ("Liver", "liver"),
        ("spleen", "spleen"),
        ("Urinary Bladder", "urinary_bladder"),
        ("bladder", "urinary_bladder"),  # VISTA3D
        ("left iliac vena", "iliac_vena_left"),  # VISTA3D
        ("Left common iliac vein", "iliac_vena_left"),
        ("L3 vertebra", "vertebrae_L3"),
        ("Rib 3 left", "rib_left_3"),
        ("Left Clavicle", "clavicula_left"),  # SNOMED meaning
        ("Left atrium", "heart_atrium_left"),  # SNOMED, side in the code
        ("Middle lobe of right lung", "lung_middle_lobe_right"),
        ("Small intestine", "small_bowel"),
    ],
)
def test_wholebody_resolves_other_spellings(name, structure):
    found = WHOLEBODY.resolve(name)
    assert found and found.structure == structure and found.channel == wholebody_labels()[structure]


@pytest.mark.parametrize("name", ["background", "Tumour", "heart", "kidney", "Left bone", "left muscle", "Segment_1", ""])
def test_names_of_no_single_channel_map_to_nothing(name):
    assert WHOLEBODY.resolve(name) is None


def test_seg_codes_resolve_a_segment_whatever_its_label():
    assert WHOLEBODY.channel("Segment 1", ("64033007", "7771000")) == wholebody_labels()["kidney_left"]
    assert WHOLEBODY.channel("Segment 1", ("113197003", "7771000")) is None  # a rib: twelve channels have it
    assert name_code("my_new_structure") is None and name_code("left hip") is None  # generic / the tissue only


def test_every_totalsegmentator_v2_and_v1_name_keeps_its_vista3d_class():
    vista = vista3d_resolver()
    assert [n for n in TOTALSEGMENTATOR["total_v2"].values() if vista.resolve(n) is None] == []
    unmatched = [n for n in wholebody_labels() if vista.resolve(n) is None]
    assert sorted(unmatched) == sorted(
        ["heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right", "heart_ventricle_right", "pulmonary_artery", "face"]
    )


def test_channels_without_a_synonym_from_vista3d_totalsegmentator_v2_or_snomed():
    """The issue's list: the 104 channels no other vocabulary names (all others have one)."""
    v2 = set(TOTALSEGMENTATOR["total_v2"].values())
    vista_names = {WHOLEBODY.resolve(n).structure for n in table_labels() if WHOLEBODY.resolve(n)}
    by_code = {n for n in wholebody_labels() if WHOLEBODY.channel(None, name_code(n))}
    alone = [n for n in wholebody_labels() if n not in v2 | vista_names | by_code]
    assert alone == ["heart_myocardium"]


def test_vista3d_names_one_matcher():
    assert class_id_for_name("kidney_left") == class_id_for_name("Kidney (left)") == 14
    assert class_id_for_name("urinary_bladder") == 15
    assert class_id_for_name("My Tumour", {"my tumour": 140}) == 140
