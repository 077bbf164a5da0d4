"""What every DICOM object this app writes (SEG, SR, RTSTRUCT) shares: a new series of one new instance by
the same manufacturer, dated as made, and the UIDs its writer returns."""

from __future__ import annotations

from typing import Any

MANUFACTURER = "MONAI Label"


def new_series(series_number: int) -> dict[str, Any]:
    """highdicom's keyword arguments for a new series holding one new instance."""
    import highdicom as hd

    return {
        "series_instance_uid": hd.UID(),
        "series_number": series_number,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
    }


def saved(dataset, output_file: str) -> dict[str, str]:
    """Writes ``dataset`` (its series dated when its content was made, where PACS worklists look);
    returns its series, instance and study UIDs."""
    dataset.SeriesDate, dataset.SeriesTime = dataset.ContentDate, dataset.ContentTime
    dataset.save_as(output_file)
    return uids(dataset)


def uids(dataset) -> dict[str, str]:
    return {key: str(dataset.get(key)) for key in ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID")}
