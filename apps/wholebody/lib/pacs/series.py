"""Series from the PACS: looked up, downloaded in their stored transfer syntax, converted to NIfTI once.

MONAI Label's stock DICOMweb datastore asks for explicit VR little endian, which Orthanc cannot transcode
from JPEG 2000 without its GDCM plugin (HTTP 500); here a series comes as stored (``transfer-syntax=*``)
and SimpleITK/GDCM decodes it (pylibjpeg-openjpeg is there for pydicom).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List

from fastapi import HTTPException
from pydicom.dataset import Dataset

from lib.pacs.connection import PacsConnection
from lib.server.errors import NotFoundError, check_id

logger = logging.getLogger(__name__)

ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


def series_meta(connection: PacsConnection, series_id: str) -> Dataset:
    """The series' QIDO attributes (Study Instance UID, Modality ...); 404 when the PACS has no such series."""
    with connection.answering(f"looking up series {series_id}"):
        found = [
            s
            for s in connection.client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
            if s.get("0020000E", {}).get("Value") == [series_id]
        ]
    if not found:
        raise NotFoundError(f"series '{series_id}' not found in the PACS at {connection.url}")
    return Dataset.from_json(found[0])


def download_series(connection: PacsConnection, study_id: str, series_id: str, target: str) -> str:
    """Every instance of the series, as stored, into the folder ``target`` (replaced whole)."""
    start = time.time()
    with connection.answering(f"downloading series {series_id}"):
        instances = connection.client.retrieve_series(study_id, series_id, media_types=ANY_TRANSFER_SYNTAX)
    if not instances:
        raise NotFoundError(f"series '{series_id}' has no instances in the PACS")
    tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(target))
    for ds in instances:
        ds.save_as(os.path.join(tmp, f"{check_id(str(ds.SOPInstanceUID), 'SOP Instance UID')}.dcm"))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    logger.info(f"Series {series_id}: {len(instances)} instances in {time.time() - start:.1f} s")
    return target


def to_nifti(series_dir: str) -> str:
    """The series as a temporary NIfTI file (the caller removes it)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(series_dir)
    if not names:
        raise HTTPException(status_code=422, detail=f"no readable DICOM image in series {os.path.basename(series_dir)}")
    reader.SetFileNames(names)
    image = reader.Execute()
    out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
    sitk.WriteImage(image, out)
    return out


def source_files(series_dir: str) -> List[str]:
    """The series' DICOM files in the order of the NIfTI's slices (GDCM's sort, as converted)."""
    import SimpleITK as sitk

    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(series_dir))


def info_from_meta(meta: Dataset) -> Dict[str, Any]:
    """What the datastore keeps of a series."""
    info = {"SeriesInstanceUID": str(meta.SeriesInstanceUID)}
    for field in ("StudyInstanceUID", "StudyDate", "StudyTime", "Modality", "PatientID", "SeriesDescription"):
        value = meta.get(field)
        info[field] = str(value.value if hasattr(value, "value") else value) if value else "UNK"
    return info
