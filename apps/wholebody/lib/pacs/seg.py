"""Label maps to DICOM SEG and back, in Python (highdicom), with standard codes for the segments.

Stock MONAI Label writes DICOM SEG with dcmqi's ``itkimage2segimage`` binary, downloaded from
GitHub at start-up, and codes every segment as "Spleen" (SCT 78961009) whatever its name. Here:

- each segment is named as the model (or the annotator) named it, so that training maps it back
  to the right channel;
- its Segmented Property Category / Type / Modifier come from SNOMED CT (``lib.labels.snomed``, the
  table reading uses too);
- the SEG references its source series and instances, and frames follow the source slices.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
from typing import Mapping, Sequence

import numpy as np

from lib.labels.saved import Segment
from lib.labels.snomed import SCT, name_words, segment_codes

logger = logging.getLogger(__name__)


def display_color(name: str) -> tuple[int, int, int]:
    """A colour for the segment: MONAI Label's anatomy colours where the name is known."""
    try:
        from monailabel.datastore.utils.colors import GENERIC_ANATOMY_COLORS as colors
    except ImportError:  # pragma: no cover - monailabel is always there in the app
        colors = {}
    words = name_words(name)
    side = [w for w in words if w in ("left", "right")]
    rest = [w for w in words if w not in ("left", "right")]
    for candidate in (" ".join(words), " ".join(side + rest), " ".join(rest)):
        if candidate in colors:
            return tuple(int(c) for c in colors[candidate][:3])
    hue = int(hashlib.md5(name.encode()).hexdigest()[:4], 16) / 0xFFFF
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.9))


def rgb_to_dicom_lab(rgb: Sequence[int]) -> list[int]:
    """sRGB (0..255) -> CIELab (D65) scaled to 0..65535 as DICOM's RecommendedDisplayCIELabValue."""

    def linear(c: float) -> float:
        c /= 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    lab_l, lab_a, lab_b = 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))
    return [
        int(round(max(0.0, min(100.0, lab_l)) * 65535 / 100)),
        int(round((max(-128.0, min(127.0, lab_a)) + 128) * 65535 / 255)),
        int(round((max(-128.0, min(127.0, lab_b)) + 128) * 65535 / 255)),
    ]


def _coded(code: tuple[str, str]):
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code[0], scheme_designator=SCT, meaning=code[1])


def segment_description(number: int, name: str, algorithm: str | None, version: str, automatic: bool = False):
    """A highdicom SegmentDescription: SEMIAUTOMATIC with the model named when a model made
    (and a person saved) the label, AUTOMATIC for a model's output nobody reviewed, MANUAL otherwise."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    seg_codes = segment_codes(name)
    if algorithm:
        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if automatic else hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm, family=codes.cid7162.ArtificialIntelligence, version=version
        )
    else:
        algorithm_type, identification = hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=_coded(seg_codes.category),
        segmented_property_type=_coded(seg_codes.type),
        algorithm_type=algorithm_type,
        algorithm_identification=identification,
    )
    if seg_codes.modifier:
        description.SegmentedPropertyTypeModifierCodeSequence = [_coded(seg_codes.modifier)]
    description.RecommendedDisplayCIELabValue = rgb_to_dicom_lab(display_color(name))
    return description


def slice_spacing(sources: Sequence) -> float | None:
    """The real distance between slices. Readers that rebuild the volume from a SEG (pydicom-seg,
    hence MONAI Label) take SpacingBetweenSlices, else the slice thickness: on the shared CT, 3 mm
    slices every 2 mm, the thickness alone puts the frames up to 50 % off."""
    first = sources[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = sorted(float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for ds in sources)
    gaps = np.diff(positions)
    return round(float(np.median(gaps)), 6) if len(gaps) else None


def write_seg(
    source_files: Sequence[str],
    labelmap: np.ndarray,
    names: Mapping[int, str],
    output_file: str,
    *,
    algorithm: str | None = None,
    version: str = "",
    series_description: str = "MONAI Label",
    series_number: int = 300,
    content_creator: str | None = None,
    label_tag: str = "final",
) -> dict:
    """Writes ``labelmap`` (frames x rows x columns, frame i lying on ``source_files[i]``) as a
    binary DICOM SEG. Label values become consecutive segment numbers (DICOM requires 1..n);
    returns the SEG's UIDs and ``segments``: [{number, value, name, code}]. ``label_tag``: the
    datastore tag it is saved under; any other than ``final`` is a model's output (AUTOMATIC
    segments, ContentLabel = the tag), which the datastore never takes for a label to train on."""
    import highdicom as hd
    import pydicom

    from lib.pacs.new_object import new_series, saved
    from lib.pacs.seg_tags import FINAL_TAG, MANUFACTURER_MODEL, content_label

    sources = [pydicom.dcmread(path) for path in source_files]
    if labelmap.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(
            f"label map {labelmap.shape} does not match the series ({len(sources)} x {sources[0].Rows} x {sources[0].Columns})"
        )
    values = [int(v) for v in np.unique(labelmap) if v != 0]
    if not values:
        raise ValueError("the label is empty: a DICOM SEG needs at least one segment")
    lut = np.zeros(int(labelmap.max()) + 1, dtype=np.uint16)
    segments, descriptions = [], []
    for number, value in enumerate(values, start=1):
        lut[value] = number
        name = names.get(value) or f"Segment {value}"
        descriptions.append(segment_description(number, name, algorithm, version, automatic=label_tag != FINAL_TAG))
        codes = segment_codes(name)
        segments.append({"number": number, "value": value, "name": name, "code": [codes.type[0], codes.modifier[0] if codes.modifier else None]})
    pixel_array = lut[labelmap.astype(np.int64)]
    pixel_array = pixel_array.astype(np.uint8 if len(values) < 256 else np.uint16)

    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **new_series(series_number),
        manufacturer_model_name=MANUFACTURER_MODEL,
        software_versions=version or "0",
        device_serial_number="0",
        content_label=content_label(label_tag),
        content_description=series_description[:64],
        content_creator_name=content_creator,
        series_description=series_description[:64],
    )
    # Set after construction: passing different pixel measures makes highdicom treat the frames
    # as resampled (each would reference every source slice).
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = slice_spacing(sources)
    if spacing:
        measures.SpacingBetweenSlices = spacing
    # Dated when it was made: PACS worklists (and the newest-label choice) look there.
    return {**saved(seg, output_file), "segments": segments}


def _segment(item) -> Segment:
    """A SEG's segment: its label, number and SNOMED CT type and side (what a name may not say)."""
    code = None
    if item.get("SegmentedPropertyTypeCodeSequence"):
        modifier = item.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence") or item.get(
            "SegmentedPropertyTypeModifierCodeSequence"
        )
        code = (str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue), str(modifier[0].CodeValue) if modifier else None)
    return Segment(str(item.SegmentLabel), int(item.SegmentNumber), code=code)


def _spatial_locations_unstated(seg) -> bool:
    """OHIF's SEG (dcmjs) derives each frame from one source instance but leaves out Spatial Locations Preserved,
    which highdicom needs before it reads frames by their source instances. Unstated is taken as preserved (each
    frame is its source slice, as the viewer drew it); a SEG that says NO is still refused."""
    stated = set()
    for frame in seg.get("PerFrameFunctionalGroupsSequence") or []:
        for derivation in frame.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                stated.add(source.get("SpatialLocationsPreserved"))
    return stated <= {None, ""}


def read_seg(seg_file: str, source_uids: Sequence[str]) -> tuple[np.ndarray, list[Segment]]:
    """A SEG as a label map on the given source instances (frames x rows x columns; value =
    segment number) and its segments (value = segment number)."""
    import highdicom as hd

    seg = hd.seg.segread(seg_file)
    segments = [_segment(item) for item in seg.SegmentSequence]
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    present = [uid for uid in source_uids if uid in referenced]
    labelmap = np.zeros((len(source_uids),) + (int(seg.Rows), int(seg.Columns)), dtype=np.uint16)
    if present:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=present, combine_segments=True, skip_overlap_checks=True,
            ignore_spatial_locations=_spatial_locations_unstated(seg),
        )
        index = {uid: i for i, uid in enumerate(source_uids)}
        for k, uid in enumerate(present):
            labelmap[index[uid]] = pixels[k]
    return labelmap, segments
