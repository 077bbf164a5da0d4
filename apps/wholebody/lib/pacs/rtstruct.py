"""Label maps as DICOM RT Structure Sets, for radiotherapy planning systems that import contours, not SEG.

One ROI per structure (its name, its display colour, ``ORGAN``), one closed planar contour per outline per
slice, in the source series' frame of reference, each referencing the CT instance it lies on. The module set
is written with pydicom; the outlines come from scikit-image's marching squares (``find_contours`` at level
0.5 on the slice's mask, padded so that a structure touching the border closes): each vertex lies half-way
between a voxel inside and one outside, so filling the polygons (pixel centres inside, holes by even-odd)
gives the mask back. rt-utils would need OpenCV, which this stack does not carry; highdicom writes no RTSTRUCT.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from lib.pacs.new_object import MANUFACTURER, uids
from lib.pacs.seg import display_color

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management: how RT references a study
RTSTRUCT_SERIES_NUMBER = 302
CONTOUR_DATA = 0x30060050


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Outlines of a 2D mask: closed polygons of (row, column) points, in pixel units."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    # find_contours repeats the first point at the end of a closed outline; DICOM closes it implicitly.
    return [c[:-1] - 1.0 for c in find_contours(padded, 0.5) if len(c) >= 4]


def write_rtstruct(
    source_files: Sequence[str],
    labelmap: np.ndarray,
    names: Mapping[int, str],
    output_file: str,
    *,
    algorithm: str = "MONAI Label",
    version: str = "",
    series_description: str = "MONAI Label contours",
) -> dict:
    """Writes ``labelmap`` (frames x rows x columns, frame i lying on ``source_files[i]``) as an RT Structure
    Set; returns its UIDs and ``rois``: [{number, value, name, contours}]."""
    import datetime

    import pydicom
    from pydicom.charset import convert_encodings, default_encoding
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in source_files]
    if labelmap.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"label map {labelmap.shape} does not match the series ({len(sources)} x {sources[0].Rows} x {sources[0].Columns})")
    values = [int(v) for v in np.unique(labelmap) if v != 0]
    if not values:
        raise ValueError("the label is empty: an RT Structure Set needs at least one structure")
    first = sources[0]
    frame_of_reference = str(first.FrameOfReferenceUID)
    now = datetime.datetime.now()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):  # fmt: skip
        setattr(ds, keyword, first.get(keyword, ""))
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), RTSTRUCT_SERIES_NUMBER
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.SeriesDescription = series_description[:64]
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = MANUFACTURER, algorithm[:64], version or "0"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "MONAI Label"[:16]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime

    def image_reference(source) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        return item

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    references = [image_reference(s) for s in sources]  # one per slice, shared by the contours on it
    series.ContourImageSequence = DicomSequence(references)
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT_SOP_CLASS, first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    to_patient = [_pixel_to_patient(s) for s in sources]
    rois, roi_items, contour_items, observations = [], [], [], []
    for number, value in enumerate(values, start=1):
        name = names.get(value) or f"Segment {value}"
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame_of_reference, name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_items.append(roi)

        contours = []
        for index in np.flatnonzero((labelmap == value).any(axis=(1, 2))):
            for outline in slice_contours(labelmap[index] == value):
                contour = Dataset()
                contour.ContourImageSequence = DicomSequence([references[index]])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                points = to_patient[index](outline)
                contour.NumberOfContourPoints = len(points)
                contour[CONTOUR_DATA] = _contour_data(points)
                contour.set_original_encoding(False, True, default_encoding)
                contours.append(contour)
        item = Dataset()
        item.ROIDisplayColor = list(display_color(name))
        item.ReferencedROINumber = number
        item.ContourSequence = DicomSequence(contours)
        item.set_original_encoding(False, True, default_encoding)
        contour_items.append(item)

        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        observations.append(observation)
        rois.append({"number": number, "value": value, "name": name, "contours": len(contours)})
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    # Datasets marked as already in the encoding written are written element by element as built, the contour
    # data as encoded; pydicom otherwise walks every element first (correct_ambiguous_vr: none is ambiguous here)
    # and decodes the encoded values on the way.
    ds.set_original_encoding(False, True, convert_encodings(ds.SpecificCharacterSet))
    ds.save_as(output_file, write_like_original=False)
    return {**uids(ds), "rois": rois}


def _contour_data(points: np.ndarray):
    """ContourData (DS, one value per coordinate), encoded as it is written (Explicit VR Little Endian). As a
    list, pydicom makes, validates and checks one DSfloat per value: most of a save whose label is noisy (an
    early model's: tens of thousands of outlines, millions of coordinates)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    encoded = "\\".join(f"{x:.4f}".rstrip("0").rstrip(".") for x in points.ravel()).encode("ascii")
    encoded += b" " * (len(encoded) % 2)  # DICOM values have even lengths; DS pads with a space
    return RawDataElement(Tag(CONTOUR_DATA), "DS", len(encoded), encoded, 0, False, True)


def _pixel_to_patient(source):
    """(row, column) points of the slice -> (x, y, z) patient millimetres (DICOM: the first three of
    ImageOrientationPatient follow the columns' index, the last three the rows')."""
    origin = np.asarray(source.ImagePositionPatient, dtype=np.float64)
    orientation = np.asarray(source.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    along_row, along_column = orientation[:3] * column_spacing, orientation[3:] * row_spacing

    def convert(points: np.ndarray) -> np.ndarray:
        return origin + points[:, 1:2] * along_row + points[:, 0:1] * along_column

    return convert
