"""The measurements of a stored SEG as a DICOM Structured Report (TID 1500 Measurement Report), written
with highdicom: per segment, its volume (ml) and mean attenuation (HU), each in a volumetric ROI group
(TID 1411) that references the SEG's segment, and through it the source series; PACS viewers (OHIF's
measurement panel) list it with the study."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# Concepts of TID 1411 rows: what is measured, how it is derived, in which unit.
VOLUME = ("118565006", "SCT", "Volume")
MILLILITRE = ("ml", "UCUM", "milliliter")
ATTENUATION = ("112031", "DCM", "Attenuation Coefficient")
MEAN = ("373098007", "SCT", "Mean")
HOUNSFIELD = ("[hnsf'U]", "UCUM", "Hounsfield unit")
CT_PROCEDURE = ("25045-6", "LN", "CT unspecified body region")
SR_SERIES_NUMBER = 301  # the SEG's is 300: the report sorts beside it


def write_sr(
    seg_file: str,
    source_files: Sequence[str],
    segments: Sequence[Mapping[str, Any]],
    measurements: Sequence[Mapping[str, Any]],
    output_file: str,
    *,
    algorithm: str = "MONAI Label",
    version: str = "",
    series_description: str = "MONAI Label measurements",
) -> dict:
    """Writes the Comprehensive 3D SR of ``measurements`` (``lib.measurements``, by label value) of the SEG in
    ``seg_file`` whose ``segments`` ([{number, value, name}], as ``write_seg`` returns them) map label values
    to segment numbers. Returns the SR's UIDs and how many segments it measures."""
    import highdicom as hd
    import pydicom

    from lib.pacs.new_object import new_series, saved

    def concept(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])

    seg = pydicom.dcmread(seg_file)
    number_of = {int(s["value"]): int(s["number"]) for s in segments}
    type_of = {int(item.SegmentNumber): item.SegmentedPropertyTypeCodeSequence[0] for item in seg.SegmentSequence}
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm[:64], version=version or "0")
    groups = []
    for m in measurements:
        number = number_of.get(int(m["label"]))
        if number is None:
            continue  # a value the SEG does not hold (nothing to reference)
        code = type_of[number]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=str(m["name"])[:64]),
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, number),
                finding_type=hd.sr.CodedConcept(code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning),
                measurements=[
                    hd.sr.Measurement(name=concept(VOLUME), value=float(m["volume_ml"]), unit=concept(MILLILITRE), algorithm_id=algorithm_id),
                    hd.sr.Measurement(
                        name=concept(ATTENUATION),
                        value=float(m["hu_mean"]),
                        unit=concept(HOUNSFIELD),
                        derivation=concept(MEAN),
                        algorithm_id=algorithm_id,
                    ),
                ],
            )
        )
    if not groups:
        raise ValueError("no measured segment: a measurement report needs at least one")
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=algorithm[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=concept(CT_PROCEDURE),
        imaging_measurements=groups,
    )
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in source_files]
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources],
        content=report,
        **new_series(SR_SERIES_NUMBER),
        is_complete=True,
        series_description=series_description[:64],
    )
    return {**saved(sr, output_file), "segments": len(groups)}
