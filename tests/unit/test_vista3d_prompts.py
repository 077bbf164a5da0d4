"""VISTA3D prompt resolution and checks (no network, no image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import VISTA3D_CLASSES
from lib.vista3d.prompts import (
    AUTO_UNSUPPORTED,
    CLASSES,
    CLASSES_JSON,
    EVERYTHING,
    EVERYTHING_EXCLUDED,
    MAX_POINTS,
    SUBCLASSES,
    PromptError,
    ResolvedPrompts,
    check_points,
    normalize_name,
    resolve_prompts,
)

SHAPE = (122, 101, 30)


def resolve(label_prompt=None, points=None, point_labels=None, shape=SHAPE, extra=None) -> ResolvedPrompts:
    return resolve_prompts(label_prompt, points, point_labels, shape, extra_classes=extra)


def error_of(*args, **kwargs) -> str:
    with pytest.raises(PromptError) as info:
        resolve(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- table, everything, subclasses
def test_app_table_is_an_exact_copy_of_the_shared_one():
    assert Path(CLASSES_JSON).read_bytes() == VISTA3D_CLASSES.read_bytes()


def test_class_table():
    assert len(CLASSES) == 133 and sorted(CLASSES) == list(range(133))
    assert CLASSES[0] == "background" and CLASSES[1] == "liver" and CLASSES[132] == "airway"
    raw = json.loads(Path(CLASSES_JSON).read_text())
    assert {int(k): v for k, v in raw.items()} == CLASSES


def test_everything_is_the_bundle_list():
    expected = sorted(set(range(1, 133)) - {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})
    assert list(EVERYTHING) == expected
    assert len(EVERYTHING) == 117
    assert EVERYTHING_EXCLUDED == {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132}


def test_subclasses():
    assert SUBCLASSES[2] == [14, 5]
    assert SUBCLASSES[20] == [28, 29, 30, 31, 32]
    assert SUBCLASSES[21] == list(range(33, 57)) + list(range(63, 98)) + [114, 120, 122]
    assert set(SUBCLASSES) == {2, 20, 21}


# ---------------------------------------------------------------- class prompts
def test_none_means_everything():
    r = resolve()
    assert r.mode == "everything"
    assert r.label_prompt == EVERYTHING and r.class_vector == EVERYTHING
    assert r.points is None and r.point_labels is None
    assert r.label_names["liver"] == 1 and len(r.label_names) == 117


@pytest.mark.parametrize(
    "prompt", ["left kidney", "Left_Kidney", "LEFT KIDNEY", "  left   kidney ", "left_kidney", 14, "14", np.int64(14)]
)
def test_ids_and_names_are_accepted(prompt):
    r = resolve([prompt])
    assert r.mode == "classes" and r.label_prompt == (14,) and r.class_vector == (14,)
    assert r.label_names == {"left kidney": 14}


def test_single_prompt_and_mixed_list_deduplicated():
    assert resolve("liver").class_vector == (1,)
    r = resolve(["liver", 3, "Spleen", "1", "vertebrae_L5"])
    assert r.label_prompt == (1, 3, 33)
    assert r.label_names == {"liver": 1, "spleen": 3, "vertebrae L5": 33}


def test_subclass_expansion_for_automatic_prompts():
    r = resolve(["kidney"])
    assert r.label_prompt == (2,) and r.class_vector == (14, 5)
    r = resolve(["lung", "liver"])
    assert r.class_vector == (28, 29, 30, 31, 32, 1)
    r = resolve(["bone", "left rib 1"])  # 63 is a subclass of bone and is not repeated
    assert r.class_vector == tuple(SUBCLASSES[21])


def test_normalize_name():
    assert normalize_name(" Portal_Vein and  SPLENIC_vein ") == "portal vein and splenic vein"


@pytest.mark.parametrize(
    "prompt, needle",
    [
        (["no such organ"], "'no such organ'"),
        (["liver", "livr"], "'livr'"),
        ([200], "200"),
        (["200"], "200"),
        ([133], "133"),
        ([-3], "-3"),
        ([0], "background"),
        ([1.5], "1.5"),
        ([None], "None"),
        ([True], "True"),
    ],
)
def test_unknown_classes_are_named(prompt, needle):
    msg = error_of(prompt)
    assert needle in msg


def test_prompt_error_is_a_value_error():
    assert issubclass(PromptError, ValueError)
    with pytest.raises(ValueError):
        resolve(["nope"])


@pytest.mark.parametrize("cid", sorted(AUTO_UNSUPPORTED))
def test_classes_without_class_head_need_points(cid):
    assert str(cid) in error_of([cid])
    r = resolve([cid], [[1, 2, 3]], [1])
    assert r.mode == "class_points" and r.class_vector == (cid,)


def test_empty_label_prompt_without_points_is_an_error():
    assert "empty" in error_of([])


# ---------------------------------------------------------------- new classes (finetuning)
def test_extra_classes_by_name_and_id():
    extra = {"Left_Kidney_Tumour": 133, "stent": 254}
    r = resolve(["left kidney tumour", "STENT", 1], extra=extra)
    assert r.class_vector == (133, 254, 1)
    assert r.label_names == {"Left_Kidney_Tumour": 133, "stent": 254, "liver": 1}
    assert resolve([133], extra=extra).class_vector == (133,)
    r = resolve(["stent"], [[3, 3, 3]], [1], extra=extra)
    assert r.mode == "class_points" and r.class_vector == (254,)
    assert "'stnt'" in error_of(["stnt"], extra=extra)
    assert "200" in error_of([200], extra=extra)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"my thing": 100}, "100"),
        ({"my thing": 255}, "255"),
        ({"Liver": 140}, "Liver"),
        ({"a": 140, "b": 140}, "140"),
        ({"a": "x"}, "'x'"),
    ],
)
def test_bad_extra_classes(extra, needle):
    assert needle in error_of(["liver"], extra=extra)


# ---------------------------------------------------------------- points
def test_points_only():
    r = resolve(None, [[10, 20, 5], [11.0, 20, 5]], [1, 0])
    assert r.mode == "points" and r.label_prompt is None and r.class_vector is None
    assert r.points == ((10, 20, 5), (11, 20, 5))
    assert r.point_labels == (1, 0) and r.network_point_labels == (1, 0)
    assert r.label_names == {}


def test_points_as_arrays():
    r = resolve(None, np.array([[1, 2, 3]]), np.array([1]))
    assert r.points == ((1, 2, 3),) and r.point_labels == (1,)


def test_one_class_with_points():
    r = resolve(["spleen"], [[10, 20, 5]], [1])
    assert r.mode == "class_points" and r.class_vector == (3,) and r.network_point_labels == (1,)


def test_special_class_point_labels_are_converted():
    r = resolve(["hepatic vessel"], [[1, 1, 1], [2, 2, 2], [3, 3, 3]], [1, 0, -1])
    assert r.point_labels == (1, 0, -1)
    assert r.network_point_labels == (3, 2, -1)


def test_several_classes_with_points_is_an_error():
    msg = error_of(["liver", "spleen"], [[1, 1, 1]], [1])
    assert "one class" in msg and "[1, 3]" in msg


@pytest.mark.parametrize("prompt, cid", [("kidney", 2), ("lung", 20), ("bone", 21), (2, 2), ("20", 20), (21, 21)])
def test_subclass_classes_with_points_is_an_error(prompt, cid):
    msg = error_of([prompt], [[1, 1, 1]], [1])
    assert f"class {cid} ({CLASSES[cid]})" in msg and "subclasses" in msg


@pytest.mark.parametrize(
    "point",
    [[122, 5, 5], [5, 101, 5], [5, 5, 30], [-1, 5, 5], [1e9, 0, 0], [1e300, 0, 0]],
)
def test_points_outside_the_image_are_named(point):
    msg = error_of(None, [[1, 1, 1], point], [1, 0])
    assert "point 1" in msg
    assert "[" + ", ".join(f"{float(c):g}" for c in point) + "]" in msg  # 1e300 as written, not as 301 digits
    assert "[122, 101, 30]" in msg


@pytest.mark.parametrize("point", [[5, 5, 29.5], [0.5, 1, 1]])
def test_fractional_points_are_refused(point):
    msg = error_of(None, [[1, 1, 1], point], [1, 0])
    assert "point 1" in msg and "integers" in msg


def test_thousands_of_points_are_refused_before_any_image():
    points = [[1, 1, 1]] * (MAX_POINTS + 1)
    with pytest.raises(PromptError, match=f"{MAX_POINTS + 1} points: at most {MAX_POINTS}"):
        check_points(points, [1] * len(points))
    assert check_points([[1, 2, 3]] * MAX_POINTS, [1] * MAX_POINTS)[0][0] == (1, 2, 3)


def test_points_on_the_last_voxel_are_inside():
    r = resolve(None, [[121, 100, 29], [0, 0, 0]], [1, 1])
    assert r.points == ((121, 100, 29), (0, 0, 0))


def test_empty_points_without_class_is_an_error():
    assert "empty" in error_of(None, [], [])
    assert "empty" in error_of(None, [], None)


def test_empty_points_with_class_is_a_class_prompt():
    r = resolve(["liver"], [], [])
    assert r.mode == "classes" and r.points is None and r.class_vector == (1,)


@pytest.mark.parametrize("labels", [[1], [1, 0, 1], []])
def test_point_label_count_must_match(labels):
    msg = error_of(None, [[1, 1, 1], [2, 2, 2]], labels)
    assert f"2 points but {len(labels)} point_labels" in msg


def test_point_labels_required_and_valid():
    assert "point_labels" in error_of(None, [[1, 1, 1]], None)
    assert "point label 1" in error_of(None, [[1, 1, 1], [2, 2, 2]], [1, 5])
    assert "point label 0" in error_of(None, [[1, 1, 1]], ["x"])
    assert "ignore" in error_of(None, [[1, 1, 1]], [-1])
    assert "without points" in error_of(["liver"], None, [1])


@pytest.mark.parametrize(
    "points, needle",
    [([[1, 2]], "3 coordinates"), ([[1, 2, 3, 4]], "3 coordinates"), ([[1, "a", 3]], "'a'"), ([[1, float("nan"), 3]], "finite")],
)
def test_malformed_points(points, needle):
    assert needle in error_of(None, points, [1])


@pytest.mark.parametrize("shape", [(10, 10), (1, 10, 10, 10), None, (10, 0, 10)])
def test_image_shape_must_be_3d(shape):
    with pytest.raises(PromptError):
        resolve_prompts(["liver"], None, None, shape)
