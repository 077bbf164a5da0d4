"""VISTA3D prompts: class table, "everything", subclass expansion and checks on a request.

The rules are those of the official bundle (Project-MONAI/model-zoo ``models/vista3d``:
``configs/inference.json`` and ``scripts/evaluator.py::check_prompts_format``) and
``monai.apps.vista3d.transforms.VistaPreTransformd``:

* ``label_prompt`` is a list of global class ids (or names); ``None`` (and no points) means
  "everything" = classes 1..132 minus ``EVERYTHING_EXCLUDED``;
* points are ``[[x, y, z], ...]`` voxel indices (integers) of the ORIGINAL image, at most
  ``MAX_POINTS``, with ``point_labels`` (1 foreground, 0 background, -1 ignore; 2/3 are the
  special-class negative/positive flags);
* several class prompts cannot be combined with points, nor can a class that expands into
  subclasses (2 kidney, 20 lung, 21 bone);
* ids 133..254 are free for new classes learned by finetuning; they are accepted only when the app
  declares them (``extra_classes``).

Everything here is pure Python (no torch): it runs before any image is read, so a bad request fails
fast with a message that names the bad item.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from lib.conf import ConfError

__all__ = [
    "PromptError",
    "ResolvedPrompts",
    "CLASSES_JSON",
    "CLASSES",
    "NAME_TO_ID",
    "EVERYTHING",
    "EVERYTHING_EXCLUDED",
    "SUBCLASSES",
    "AUTO_UNSUPPORTED",
    "SPECIAL_INDEX",
    "FIRST_NEW_CLASS_ID",
    "LAST_NEW_CLASS_ID",
    "load_classes",
    "normalize_name",
    "class_name",
    "resolve_prompts",
    "check_points",
    "MAX_POINTS",
]

CLASSES_JSON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "labels", "vista3d_classes.json")

#: last id the published network was trained on; 133..254 are free for finetuned classes
LAST_SUPPORTED_ID = 132
FIRST_NEW_CLASS_ID = 133
LAST_NEW_CLASS_ID = 254  # 255 is the "outside the point window" value of the official post-processing

#: classes left out of "everything" (bundle ``everything_labels``)
EVERYTHING_EXCLUDED = frozenset({2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})

#: classes that expand to their subclasses (bundle ``subclass``); they cannot be combined with points
SUBCLASSES: dict[int, list[int]] = {
    2: [14, 5],
    20: [28, 29, 30, 31, 32],
    21: list(range(33, 57)) + list(range(63, 98)) + [114, 120, 122],
}

#: classes the class head does not segment without points (bundle evaluator: "Undefined label
#: prompt detected. Provide point prompts for zero-shot.")
AUTO_UNSUPPORTED = frozenset({16, 18, 129, 130, 131})

#: with a class prompt from this set, point labels 0/1 become 2/3 (defaults of
#: ``monai.apps.vista3d.transforms.VistaPreTransformd``, which the bundle uses unchanged)
SPECIAL_INDEX = (25, 26, 27, 28, 29, 117)

VALID_POINT_LABELS = (-1, 0, 1, 2, 3)

#: clicks per request: an annotator's dozens, not a volume's worth (each point is a prompt token)
MAX_POINTS = 100
#: no CT has this many voxels along an axis: a larger index is refused before the image is read
MAX_INDEX = 100_000


class PromptError(ConfError):
    """A VISTA3D prompt that cannot be used as given (a ``ValueError``)."""


def normalize_name(name: str) -> str:
    """``"Left_Kidney "`` -> ``"left kidney"``: lower case, ``_`` as space, single spaces."""
    return re.sub(r"\s+", " ", str(name).replace("_", " ")).strip().lower()


def load_classes(path: str = CLASSES_JSON) -> dict[int, str]:
    """Global id -> name, from the bundle's class table (``{"0": "background", "1": "liver", ...}``)."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    return {int(k): str(v) for k, v in raw.items()}


CLASSES: dict[int, str] = load_classes()
NAME_TO_ID: dict[str, int] = {normalize_name(v): k for k, v in CLASSES.items()}
EVERYTHING: tuple[int, ...] = tuple(i for i in range(1, LAST_SUPPORTED_ID + 1) if i not in EVERYTHING_EXCLUDED)


def class_name(class_id: int, extra_classes: Mapping[str, int] | None = None) -> str:
    """Name of a global id (table or ``extra_classes``)."""
    if class_id in CLASSES:
        return CLASSES[class_id]
    for name, cid in (extra_classes or {}).items():
        if int(cid) == class_id:
            return str(name)
    raise PromptError(f"unknown VISTA3D class id {class_id}")


@dataclass(frozen=True)
class ResolvedPrompts:
    """A checked request.

    mode: ``"everything"``, ``"classes"`` (automatic, class head), ``"points"`` (point head only) or
        ``"class_points"`` (one class plus points: both heads, as the bundle does).
    label_prompt: the requested class ids, resolved and de-duplicated, before subclass expansion
        (``EVERYTHING`` for "everything", ``None`` for points only).
    class_vector: ids to give the network: ``label_prompt`` with subclasses expanded (``None`` for
        points only). This is what ``VistaPreTransformd`` makes of ``label_prompt``.
    points: ``[[x, y, z], ...]`` voxel indices of the ORIGINAL image, or ``None``.
    point_labels: labels as given (-1/0/1, or 2/3).
    network_point_labels: ``point_labels`` with 0/1 -> 2/3 for a class in ``SPECIAL_INDEX``
        (what ``VistaPreTransformd`` does; applying it twice changes nothing).
    label_names: name -> output value for the classes in ``class_vector`` (empty for points only,
        whose output value is 1).
    """

    mode: str
    label_prompt: tuple[int, ...] | None
    class_vector: tuple[int, ...] | None
    points: tuple[tuple[int, int, int], ...] | None = None
    point_labels: tuple[int, ...] | None = None
    network_point_labels: tuple[int, ...] | None = None
    label_names: dict[str, int] = field(default_factory=dict)

    @property
    def has_points(self) -> bool:
        return self.points is not None


def _check_extra_classes(extra_classes: Mapping[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, cid in (extra_classes or {}).items():
        if isinstance(cid, bool) or not isinstance(cid, int):
            try:
                cid = int(str(cid).strip())
            except ValueError:
                raise PromptError(f"extra class {name!r}: id must be an integer, got {cid!r}") from None
        if not FIRST_NEW_CLASS_ID <= cid <= LAST_NEW_CLASS_ID:
            raise PromptError(
                f"extra class {name!r}: id {cid} is outside {FIRST_NEW_CLASS_ID}..{LAST_NEW_CLASS_ID} "
                "(ids up to 132 belong to the published classes)"
            )
        key = normalize_name(name)
        if not key:
            raise PromptError(f"extra class with id {cid} has an empty name")
        if key in NAME_TO_ID:
            raise PromptError(f"extra class {name!r} reuses the name of class {NAME_TO_ID[key]}")
        if key in out and out[key] != cid:
            raise PromptError(f"extra class {name!r} is declared twice, with ids {out[key]} and {cid}")
        out[key] = cid
    ids = list(out.values())
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PromptError(f"extra classes share ids {dup}")
    return out


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, Mapping):
        raise PromptError(f"{what} must be a list, got an object {value!r:.80}")
    if isinstance(value, (str, bytes, numbers.Number)) or not isinstance(value, Iterable):
        return [value]
    try:
        return list(value.tolist() if hasattr(value, "tolist") else value)
    except TypeError:
        raise PromptError(f"{what} must be a list, got {value!r}") from None


def _resolve_one(item: Any, extra: dict[str, int]) -> int:
    extra_ids = set(extra.values())
    if isinstance(item, bool):
        raise PromptError(f"unknown class prompt {item!r}")
    if isinstance(item, numbers.Real) and not isinstance(item, numbers.Integral) and float(item).is_integer():
        item = int(item)
    if isinstance(item, numbers.Integral):
        cid = int(item)
    elif isinstance(item, str):
        text = item.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            cid = int(text)
        else:
            key = normalize_name(text)
            if key in NAME_TO_ID:
                cid = NAME_TO_ID[key]
            elif key in extra:
                return extra[key]
            else:
                raise PromptError(f"unknown class name {item!r}")
    else:
        raise PromptError(f"unknown class prompt {item!r}: give a class id or name")
    if cid == 0:
        raise PromptError("class 0 (background) cannot be prompted")
    if cid not in CLASSES and cid not in extra_ids:
        raise PromptError(f"unknown class id {cid}")
    return cid


def _as_number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise PromptError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PromptError(f"{what} must be finite, got {value!r}")
    return number


def check_points(points: Any, point_labels: Any, image_shape: Sequence[int] | None = None):
    """``(points, labels)`` as tuples of integers; raises PromptError for a malformed, fractional, non-finite
    or (with ``image_shape``) outside point, a bad label, or more than ``MAX_POINTS``. Needs no image
    without ``image_shape``: a request's points are checked before the image is read."""
    pts_in = _as_list(points, "points")
    if not pts_in and (point_labels is None or not _as_list(point_labels, "point_labels")):
        return (), ()
    if point_labels is None:
        raise PromptError("point_labels must be given with points")
    lbl_in = _as_list(point_labels, "point_labels")
    if len(lbl_in) != len(pts_in):
        raise PromptError(f"{len(pts_in)} points but {len(lbl_in)} point_labels")
    if len(pts_in) > MAX_POINTS:
        raise PromptError(f"{len(pts_in)} points: at most {MAX_POINTS} per request")
    shape = tuple(int(s) for s in image_shape) if image_shape is not None else None
    pts: list[tuple[int, int, int]] = []
    for n, p in enumerate(pts_in):
        coords = _as_list(p, f"point {n}")
        if len(coords) != 3:
            raise PromptError(f"point {n} {p!r} must have 3 coordinates [x, y, z]")
        xyz = tuple(_as_number(c, f"point {n} coordinate") for c in coords)
        shown = f"[{', '.join(f'{c:g}' for c in xyz)}]"  # 1e300 as written, not as 301 digits
        if not all(c.is_integer() for c in xyz):
            raise PromptError(f"point {n} {shown} must be voxel indices (integers)")
        if shape is not None and any(c < 0 or c > s - 1 for c, s in zip(xyz, shape)):
            raise PromptError(f"point {n} {shown} is outside the image of shape {list(shape)}")
        if any(c < 0 or c >= MAX_INDEX for c in xyz):
            raise PromptError(
                f"point {n} {shown} is outside the image (voxel indices start at 0, and no image has {MAX_INDEX:,} voxels "
                "along an axis)"
            )
        ijk = tuple(int(c) for c in xyz)
        pts.append(ijk)  # type: ignore[arg-type]
    labels: list[int] = []
    for n, v in enumerate(lbl_in):
        number = _as_number(v, f"point label {n}")
        if not number.is_integer() or int(number) not in VALID_POINT_LABELS:
            raise PromptError(f"point label {n} is {v!r}; use 1 (foreground), 0 (background) or -1 (ignore)")
        labels.append(int(number))
    return tuple(pts), tuple(labels)


def resolve_prompts(
    label_prompt: Any,
    points: Any,
    point_labels: Any,
    image_shape: Sequence[int],
    extra_classes: dict[str, int] | None = None,
) -> ResolvedPrompts:
    """Check and resolve a VISTA3D request.

    Args:
        label_prompt: ``None`` (everything when there are no points), a class id or name, or a list of
            them. Names are matched case-insensitively with ``_`` or space (``"Left_Kidney"``).
        points: ``None`` or ``[[x, y, z], ...]`` voxel indices of the ORIGINAL image.
        point_labels: one label per point: 1 foreground, 0 background, -1 ignore (2/3: special flags).
        image_shape: spatial shape ``(X, Y, Z)`` of the original image, to check the points.
        extra_classes: finetuned classes, name -> id in 133..254.

    Raises:
        PromptError: naming the bad class, point or count.
    """
    extra = _check_extra_classes(extra_classes)
    shape = tuple(image_shape) if image_shape is not None else ()
    if len(shape) != 3 or any(isinstance(s, bool) or int(s) != s or int(s) < 1 for s in shape):
        raise PromptError(f"image_shape must be the 3 spatial sizes of the image, got {image_shape!r}")

    have_points = points is not None
    pts: tuple | None = None
    lbls: tuple | None = None
    if have_points:
        pts, lbls = check_points(points, point_labels, shape)
        if not pts:
            have_points, pts, lbls = False, None, None
    elif point_labels is not None and len(_as_list(point_labels, "point_labels")) > 0:
        raise PromptError("point_labels given without points")

    if label_prompt is None:
        ids: list[int] | None = None
    else:
        ids = []
        for item in _as_list(label_prompt, "label_prompt"):
            cid = _resolve_one(item, extra)
            if cid not in ids:
                ids.append(cid)

    def names_of(class_ids: Iterable[int]) -> dict[str, int]:
        return {class_name(c, extra_classes): c for c in class_ids}

    if not have_points:
        if ids is None:
            if points is not None:  # an explicit, empty list of points and no class
                raise PromptError("no prompt: the point list is empty and no class is given")
            return ResolvedPrompts("everything", EVERYTHING, EVERYTHING, label_names=names_of(EVERYTHING))
        if not ids:
            raise PromptError("no prompt: label_prompt is empty and no points are given")
        bad = [c for c in ids if c in AUTO_UNSUPPORTED]
        if bad:
            raise PromptError(
                f"class {bad[0]} ({CLASSES[bad[0]]}) cannot be segmented automatically; give points for it"
            )
        expanded: list[int] = []
        for c in ids:
            for s in SUBCLASSES.get(c, [c]):
                if s not in expanded:
                    expanded.append(s)
        return ResolvedPrompts("classes", tuple(ids), tuple(expanded), label_names=names_of(expanded))

    assert pts is not None and lbls is not None
    if all(v == -1 for v in lbls):
        raise PromptError("all points are labelled -1 (ignore): give at least one foreground or background point")
    if ids:
        if len(ids) > 1:
            raise PromptError(
                f"points can be combined with one class only, got {len(ids)} classes {ids}; send one request per class"
            )
        cid = ids[0]
        if cid in SUBCLASSES:
            raise PromptError(
                f"class {cid} ({CLASSES[cid]}) expands to {len(SUBCLASSES[cid])} subclasses and cannot be combined "
                "with points; prompt one of its subclasses instead"
            )
        net_lbls = tuple({0: 2, 1: 3}.get(v, v) for v in lbls) if cid in SPECIAL_INDEX else lbls
        return ResolvedPrompts("class_points", (cid,), (cid,), pts, lbls, net_lbls, names_of([cid]))
    return ResolvedPrompts("points", None, None, pts, lbls, lbls, {})
