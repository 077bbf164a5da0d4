"""RT Structure Sets (lib.pacs.rtstruct) of the shared series: valid for dciodvfy, one ROI per structure with
its name and colour, contours on the CT instances, and the contours filled back onto the CT grid are the
label map (Dice >= 0.95 for every structure of at least 1 ml)."""

from __future__ import annotations

import numpy as np
import pydicom
from skimage.draw import polygon

from conftest import dciodvfy_errors, shared_series_with_label
from lib.pacs.rtstruct import RTSTRUCT_SOP_CLASS, write_rtstruct
from lib.pacs.seg import display_color


def rasterised(rtstruct, sources, shape) -> dict[str, np.ndarray]:
    """Each ROI's contours filled on the series' grid (pixel centres inside; holes by even-odd)."""
    slice_of = {str(s.SOPInstanceUID): i for i, s in enumerate(sources)}
    names = {int(r.ROINumber): str(r.ROIName) for r in rtstruct.StructureSetROISequence}
    masks = {}
    for item in rtstruct.ROIContourSequence:
        mask = np.zeros(shape, bool)
        for contour in item.ContourSequence:
            index = slice_of[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            source = sources[index]
            origin = np.asarray(source.ImagePositionPatient, float)
            orientation = np.asarray(source.ImageOrientationPatient, float)
            row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
            points = np.asarray(contour.ContourData, float).reshape(-1, 3) - origin
            assert np.allclose(points @ np.cross(orientation[:3], orientation[3:]), 0, atol=1e-3), "a contour off its slice"
            rows, columns = points @ orientation[3:] / row_spacing, points @ orientation[:3] / column_spacing
            filled = np.zeros(shape[1:], bool)
            filled[polygon(rows, columns, shape[1:])] = True
            mask[index] ^= filled
        masks[names[int(item.ReferencedROINumber)]] = mask
    return masks


def test_rtstruct_round_trip_on_the_shared_series(tmp_path):
    files, image, frames, names = shared_series_with_label()

    info = write_rtstruct(files, frames, names, str(tmp_path / "rtstruct.dcm"), algorithm="MONAI Label wholebody")
    assert dciodvfy_errors(tmp_path / "rtstruct.dcm") == []

    rt = pydicom.dcmread(tmp_path / "rtstruct.dcm")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert rt.SOPClassUID == RTSTRUCT_SOP_CLASS and rt.Modality == "RTSTRUCT"
    assert rt.StudyInstanceUID == sources[0].StudyInstanceUID and rt.PatientID == sources[0].PatientID
    (frame,) = rt.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence] == [s.SOPInstanceUID for s in sources]
    rois = {str(r.ROIName): r for r in rt.StructureSetROISequence}
    assert sorted(rois) == sorted(names.values()) and [r["value"] for r in info["rois"]] == sorted(names)
    colours = {int(i.ReferencedROINumber): list(i.ROIDisplayColor) for i in rt.ROIContourSequence}
    assert all(colours[int(r.ROINumber)] == list(display_color(n)) for n, r in rois.items())

    masks = rasterised(rt, sources, frames.shape)
    voxel_ml = np.prod(image.GetSpacing()) / 1000
    dice = {}
    for value, name in names.items():
        truth = frames == value
        dice[name] = 2 * (masks[name] & truth).sum() / (masks[name].sum() + truth.sum())
    large = {n: d for n, d in dice.items() if (frames == {v: k for k, v in names.items()}[n]).sum() * voxel_ml >= 1}
    assert len(large) > 10 and min(large.values()) >= 0.95, sorted(dice.items(), key=lambda x: x[1])[:5]
    print("round-trip Dice: min", round(min(large.values()), 4), "mean", round(float(np.mean(list(large.values()))), 4),
          f"over {len(large)} structures >= 1 ml;", "all:", round(min(dice.values()), 4))
