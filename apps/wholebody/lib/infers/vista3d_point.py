"""``vista3d_point``: click-to-segment with VISTA3D, as 3D Slicer's MONAI Label module drives a
``deepgrow`` model.

Slicer sends ``foreground`` and ``background`` (lists of [i, j, k] voxel indices of the image it
shows, i.e. of the original file) and ``label`` (the selected segment's name). When the name is a
VISTA3D class that may be combined with points (``liver``, ``kidney_left`` ...), its class prompt is
added, as the bundle does with ``label_prompt`` + points; any other name is a new structure segmented
from the points alone (the bundle's zero-shot path). The bundle-style ``points`` / ``point_labels`` /
``label_prompt`` params work too.

Only the windows around the clicks run (``GridPointWindowInferer``); voxels outside them are
background in the answer (the bundle writes 255 there). The label value is the class id for a VISTA3D
class, 1 for a new structure, and ``label_names`` is ``{segment name: value}``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.vista3d import Vista3DTask, parse_label_prompt
from lib.vista3d.classes import class_id_for_name
from lib.vista3d.point_inferer import transform_points
from lib.vista3d.prompts import PromptError, ResolvedPrompts, check_points, resolve_prompts
from lib.vista3d.runtime import Vista3DRuntime

DEFAULT_SEGMENT_NAME = "vista3d point"
SEGMENT_KEY = "_vista3d_segment"


def _point_list(value: Any, what: str, items: str = "[i, j, k] voxel indices") -> list:
    """A list param, also given as its JSON text."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise PromptError(f"'{what}' must be a list of {items}, got {value!r}") from None
    if not isinstance(value, (list, tuple)):
        raise PromptError(f"'{what}' must be a list of {items}, got {value!r}")
    return list(value)


class Vista3DPoint(Vista3DTask):
    def __init__(self, runtime: Vista3DRuntime, precision: str = "fp32"):
        super().__init__(
            runtime,
            InferType.DEEPGROW,
            "VISTA3D click-to-segment: foreground/background points, optionally with the segment's class",
            precision=precision,
        )

    # ------------------------------------------------------------------ prompts
    def _clicks(self, data: dict[str, Any]) -> tuple[list, list]:
        if data.get("foreground") is not None or data.get("background") is not None:
            fg = _point_list(data.get("foreground"), "foreground")
            bg = _point_list(data.get("background"), "background")
            return fg + bg, [1] * len(fg) + [0] * len(bg)
        points = _point_list(data.get("points"), "points")
        labels = data.get("point_labels")
        if labels is None:
            return points, [1] * len(points)
        return points, _point_list(labels, "point_labels", "1 (foreground), 0 (background) or -1 (ignore)")

    def _class_prompt(self, data: dict[str, Any]) -> tuple[Any, str]:
        """(label_prompt for ``resolve_prompts``, segment name)."""
        explicit = parse_label_prompt(data.get("label_prompt"))
        name = data.get("label")
        if explicit is not None:
            return explicit, str(name) if name else str(explicit[0] if isinstance(explicit, list) else explicit)
        if not name:
            return None, DEFAULT_SEGMENT_NAME
        cid = class_id_for_name(name, self.runtime.extra_classes())
        return ([cid] if cid is not None else None), str(name)

    def _resolve(self, data: dict[str, Any], shape) -> tuple[ResolvedPrompts, str]:
        points, labels = self._clicks(data)
        if not points:
            raise PromptError(
                "no points: vista3d_point needs at least one click ('foreground' or 'background' voxel "
                "indices [i, j, k], or 'points' with 'point_labels')"
            )
        label_prompt, name = self._class_prompt(data)
        return resolve_prompts(label_prompt, points, labels, shape, self.runtime.extra_classes()), name

    def check_request(self, request):
        points, labels = self._clicks(request)
        if not points:
            self._resolve(request, (1, 1, 1))  # raises: no points
        check_points(points, labels)  # format, count and labels; against the image once it is read
        label_prompt, _ = self._class_prompt(request)
        if label_prompt is not None:
            # class checks only (kidney/lung/bone cannot take points): the points are checked against the image later
            resolve_prompts(label_prompt, [[0, 0, 0]], [1], (1, 1, 1), self.runtime.extra_classes())

    def prompts(self, data, prep):
        prompts, name = self._resolve(data, prep.original_shape)
        data[SEGMENT_KEY] = name
        return prompts

    # ------------------------------------------------------------------ inference
    def logits(self, network, image, prompts, prep, model_key, data):
        coords = transform_points(prompts.points, prep.original_affine, image.affine)  # [1, N, 3] float64
        labels = torch.tensor([prompts.network_point_labels])
        shape = tuple(image.shape[-3:])
        keep = []
        for n, (p, lab) in enumerate(zip(coords[0].tolist(), labels[0].tolist())):
            if all(0 <= round(c) <= s - 1 for c, s in zip(p, shape)):
                keep.append(n)
            elif lab in (1, 3):
                raise PromptError(
                    f"foreground point {n} {list(prompts.points[n])} lies outside the region VISTA3D segments "
                    "(the body: voxels above 0 HU and a 10-voxel margin around them)"
                )
            # a background point there changes nothing: that region is background anyway
        if not keep or all(labels[0, n] == -1 for n in keep):
            raise PromptError("every point lies outside the region VISTA3D segments (the body)")
        coords, labels = coords[:, keep].to(image.device), labels[:, keep].to(image.device)
        class_vector = (
            torch.tensor([list(prompts.class_vector)], device=image.device) if prompts.class_vector is not None else None
        )
        logits = self.runtime.inferer(
            network,
            image,
            point_coords=coords,
            point_labels=labels,
            class_vector=class_vector,
            image_key=prep.key,
            model_key=model_key,
        )
        post = {"points": coords.cpu(), "point_labels": labels.cpu()}
        post["label_prompt"] = torch.tensor([[prompts.class_vector[0]]]) if prompts.class_vector is not None else None
        return logits, post

    def describe(self, prompts, data):
        out = super().describe(prompts, data)
        value = prompts.class_vector[0] if prompts.class_vector is not None else 1
        out["label_names"] = {data.get(SEGMENT_KEY, DEFAULT_SEGMENT_NAME): int(value)}
        out["points"] = [list(p) for p in prompts.points or ()]
        out["point_labels"] = list(prompts.point_labels or ())
        return out
