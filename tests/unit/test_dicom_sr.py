"""The measurement report (lib.pacs.sr) of a SEG of the shared series: TID 1500 with highdicom, valid for
dciodvfy, each segment's volume and mean HU as measured, referencing the SEG's segment and the source series."""

from __future__ import annotations

import highdicom as hd
import pydicom
import SimpleITK as sitk

from conftest import dciodvfy_errors, shared_series_with_label
from lib.measurements.on_image import measure_on_image
from lib.pacs.seg import write_seg
from lib.pacs.sr import write_sr


def test_measurement_report_of_a_seg(tmp_path):
    files, image, frames, names = shared_series_with_label()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))  # as the PACS datastore converts a series

    seg = write_seg(files, frames, names, str(tmp_path / "seg.dcm"), algorithm="MONAI Label wholebody")
    # The frames (slice, row, column) are the NIfTI's voxels (i, j, k) reversed, as the datastore measures them.
    measured = measure_on_image(frames.transpose(2, 1, 0), str(tmp_path / "ct.nii.gz"), names)
    info = write_sr(str(tmp_path / "seg.dcm"), files, seg["segments"], measured, str(tmp_path / "sr.dcm"), version="0.1.0")
    assert info["segments"] == len(names) > 10

    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    sr = hd.sr.srread(str(tmp_path / "sr.dcm"))
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.Modality == "SR"  # Comprehensive 3D SR
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(names)
    number_of = {s["value"]: s["number"] for s in seg["segments"]}
    by_name = {m["name"]: m for m in measured}
    hu = sitk.GetArrayFromImage(image)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    for group in groups:
        m = by_name[group.tracking_identifier]
        referenced = group.referenced_segment
        assert referenced.referenced_sop_instance_uid == seg["SOPInstanceUID"]
        assert referenced.referenced_segment_numbers == [number_of[m["label"]]]
        sources = referenced.source_images_for_segmentation
        assert {s.referenced_sop_instance_uid for s in sources} <= uids and sources
        volume, attenuation = group.get_measurements()
        mask = frames == m["label"]
        assert volume.unit.value == "ml" and abs(volume.value - m["volume_ml"]) < 1e-6
        assert attenuation.unit.value == "[hnsf'U]" and abs(attenuation.value - hu[mask].mean()) < 1e-3
    # The SEG and the CT instances are its evidence (what it refers to).
    evidence = {item.SeriesInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence for item in study.ReferencedSeriesSequence}
    assert evidence == {seg["SeriesInstanceUID"], source.SeriesInstanceUID}
