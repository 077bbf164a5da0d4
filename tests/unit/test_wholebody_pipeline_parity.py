"""The memory-bounded wholebody pipeline against the bundle's, lowres and highres, on a crop."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import reference_pipelines
from conftest import CT
from lib.networks import wholebody_segresnet
from lib.pipelines import wholebody as pipeline


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> str:
    """A 64 x 64 x 12 voxel piece of the shared CT (3 mm), geometry kept: 128 x 128 x 24 at 1.5 mm."""
    image = nib.load(CT)
    path = tmp_path_factory.mktemp("crop") / "crop.nii.gz"
    nib.save(image.slicer[30:94, 20:84, 10:22], path)
    return str(path)


@pytest.mark.parametrize("highres", [False, True], ids=["lowres", "highres"])
def test_same_labels_as_the_bundle(crop, highres):
    torch.manual_seed(0)
    network = wholebody_segresnet().eval()
    pixdim = pipeline.PIXDIM[highres]
    ours = np.asarray(pipeline.segment(crop, network, pixdim, pipeline.ROI_SIZE, pipeline.OVERLAP, "cpu"))
    reference = reference_pipelines.wholebody(crop, network, pixdim[0])
    assert ours.shape == reference.shape == (64, 64, 12)
    assert len(np.unique(reference)) > 10, "random weights must give a varied label map"
    agreement = float((ours == reference).mean())
    print(f"{'highres' if highres else 'lowres'} agreement {agreement:.6f}")
    assert agreement >= 0.999
