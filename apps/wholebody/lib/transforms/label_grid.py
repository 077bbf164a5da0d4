"""A saved label must lie on its image's voxel grid before the two are resampled together for training.

Labels are checked against their image when they are saved; a label that reached the datastore another
way (saved before that check, put on disk by hand) and lies elsewhere would be resampled to another
grid than its image, and fail far from here (a patch sampler, the validation metric) or, worse, train
on voxels of another place. Here it fails on its own, naming both geometries, so training skips it.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform

from lib.transforms.validate import InvalidImageError

# The rule for a label and its image, when the label is saved and before training: every corner of the
# label's grid within 0.1 voxel of the image's (header rounding passes, a real shift does not).
GRID_TOLERANCE_VOXELS = 0.1


def on_same_grid(label_shape, label_affine, image_shape, image_affine) -> bool:
    """Same spatial shape, and every corner of the label's grid within ``GRID_TOLERANCE_VOXELS`` of the image's."""
    if tuple(int(s) for s in label_shape) != tuple(int(s) for s in image_shape):
        return False
    label_affine, image_affine = np.asarray(label_affine, np.float64), np.asarray(image_affine, np.float64)
    corners = np.array([[i, j, k, 1] for i in (0, image_shape[0] - 1) for j in (0, image_shape[1] - 1) for k in (0, image_shape[2] - 1)], float)
    distance = np.linalg.norm((corners @ (label_affine - image_affine).T)[:, :3], axis=1).max()
    return bool(distance <= GRID_TOLERANCE_VOXELS * np.linalg.norm(image_affine[:3, :3], axis=0).min())


def describe(shape, affine: np.ndarray) -> str:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return f"shape {tuple(int(s) for s in shape)}, spacing {tuple(round(float(s), 4) for s in spacing)} mm, origin {tuple(round(float(o), 2) for o in affine[:3, 3])}"


class LabelOnImageGridd(MapTransform):
    """Checks ``label_key`` against the image (channel-first MetaTensors of one orientation), then gives the
    label the image's affine, so that resampling puts both on the same output grid."""

    def __init__(self, label_key: str = "label", image_key: str = "image"):
        super().__init__(keys=(image_key, label_key))
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data):
        d = dict(data)
        image, label = d[self.image_key], d[self.label_key]
        shape = tuple(image.shape[1:])
        image_affine = np.asarray(image.affine, dtype=np.float64)
        label_affine = np.asarray(label.affine, dtype=np.float64)
        if not on_same_grid(label.shape[1:], label_affine, shape, image_affine):
            raise InvalidImageError(
                f"the label does not lie on its image's voxel grid: label {describe(label.shape[1:], label_affine)}; "
                f"image {describe(shape, image_affine)}"
            )
        label.affine = torch.as_tensor(image_affine, dtype=label.affine.dtype)  # the label was just loaded: in place
        return d
