"""Which SEG series a STOW-RS answer says were stored: only SEG instances, their series from the Retrieve URL,
nothing from an answer that is not DICOM JSON or names a series that is not a UID."""

import json

from lib.pacs.stored_segs import SEG_STORAGE, stored_seg_series

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def stored(sop_class: str, url: str) -> dict:
    return {"00081150": {"vr": "UI", "Value": [sop_class]}, "00081155": {"vr": "UI", "Value": ["1.2.3.9"]},
            "00081190": {"vr": "UR", "Value": [url]}}


def answer(*items) -> bytes:
    return json.dumps({"00081190": {"vr": "UR", "Value": ["http://pacs/dicom-web/studies/1.2"]},
                       "00081199": {"vr": "SQ", "Value": list(items)}}).encode()


def test_the_seg_series_of_an_orthanc_answer():
    body = answer(
        stored(SEG_STORAGE, "http://pacs/dicom-web/studies/1.2/series/1.2.5/instances/1.2.5.1"),
        stored(SEG_STORAGE, "http://pacs/dicom-web/studies/1.2/series/1.2.5/instances/1.2.5.2"),
        stored(CT_STORAGE, "http://pacs/dicom-web/studies/1.2/series/1.2.6/instances/1.2.6.1"),
        stored(SEG_STORAGE, "http://pacs/dicom-web/studies/1.2/series/1.2.7"),
    )
    assert stored_seg_series(body) == ["1.2.5", "1.2.7"]


def test_answers_that_name_no_seg_series():
    assert stored_seg_series(b"<NativeDicomModel/>") == []  # XML: imported at the next training instead
    assert stored_seg_series(b"[]") == [] and stored_seg_series(b"") == [] and stored_seg_series(b"\xff\xfe") == []
    assert stored_seg_series(json.dumps({"00081199": {"Value": "1.2.5"}}).encode()) == []
    assert stored_seg_series(answer(stored(SEG_STORAGE, "http://pacs/series/../../tools/instances/1"))) == []
    assert stored_seg_series(answer({"00081150": {"Value": [SEG_STORAGE]}}, "not an item")) == []
