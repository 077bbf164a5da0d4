"""Where a batch run's studies come from, and where DICOM SEGs go back: a folder of CT files, or a
DICOMweb PACS (through lib/pacs, as the server's DICOMweb datastore fetches and stores).

A source is pickled into the Ray stages that use it; its PACS connection and download cache are opened
lazily in each process.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from lib.batch.model import BatchError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class Study:
    id: str
    source: str  # a path, or a Series Instance UID
    image: str = ""  # the local file preprocessing reads ("" until fetched)
    version: str = ""  # changes when the study's content may have: a rerun then does it again


def _file_version(path: str) -> str:
    """Size and mtime of a file, or of a DICOM folder's files."""
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    stats = [os.stat(f) for f in files]
    return f"{sum(s.st_size for s in stats)}:{max(s.st_mtime_ns for s in stats)}:{len(stats)}"


@dataclass(frozen=True)
class FolderStudies:
    """CT files (NIfTI, NRRD, MetaImage) and DICOM series folders directly in ``folder``; a study's id is
    its name without the extension (as MONAI Label's local datastore names images)."""

    folder: str
    remote = False

    def studies(self) -> list[Study]:
        found = []
        for name in sorted(os.listdir(self.folder)):
            path = os.path.join(os.path.abspath(self.folder), name)
            if name.startswith("."):
                continue
            suffix = next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), None)
            if suffix and os.path.isfile(path):
                found.append(Study(name[: -len(suffix)], path, path, _file_version(path)))
            elif os.path.isdir(path) and any(f.lower().endswith(".dcm") for f in os.listdir(path)):
                found.append(Study(name, path, path, _file_version(path)))
        return found

    def describe(self) -> str:
        return os.path.abspath(self.folder)


@dataclass(frozen=True)
class DicomwebStudies:
    """Image series of a DICOMweb PACS (MONAI Label's search filter, CT by default); a study's id is its
    Series Instance UID (a series does not change, so that is also its version). Series are fetched in their stored transfer syntax and converted to NIfTI once,
    in ``cache``, by the server's own datastore code (lib/pacs/datastore.py)."""

    url: str
    cache: str
    auth: tuple[str, str] | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    remote = True

    def studies(self) -> list[Study]:
        from fastapi import HTTPException

        client, store = self._connection()
        try:
            with store._connection.answering("listing the series"):
                series = client.search_for_series(search_filters=self._search_filter(), get_remaining=True)
        except HTTPException as e:
            raise BatchError(f"--studies {self.url}: {e.detail}") from None
        uids = sorted({str(s["0020000E"]["Value"][0]) for s in series if s.get("0020000E", {}).get("Value")})
        return [Study(uid, uid, version=uid) for uid in uids]

    def fetch(self, series_uid: str) -> str:
        """The series as a local NIfTI file (downloaded once into the cache)."""
        return self._connection()[1].get_image_uri(series_uid)

    def store_seg(self, series_uid: str, image: str, label_file: str, names: dict[int, str], label_tag: str, rtstruct: bool = False) -> dict[str, Any]:
        """The label file as a DICOM SEG on the series (AUTOMATIC segments, ContentLabel = ``label_tag``), its
        measurement report (SR) and with ``rtstruct`` an RT Structure Set, stored back by STOW-RS; their
        series UIDs, or ``{"seg": None}`` when no structure was found."""
        import pydicom

        from lib.measurements.on_image import measure_on_image
        from lib.pacs.rtstruct import write_rtstruct
        from lib.pacs.seg import write_seg
        from lib.pacs.sr import write_sr

        client, store = self._connection()
        frames = store._label_frames(series_uid, image, label_file)
        if not frames.any():
            return {"seg": None, "note": "no structure found: nothing to store"}
        sources = store.source_files(series_uid)
        algorithm = "MONAI Label wholebody"
        with tempfile.TemporaryDirectory() as tmp:
            files = {kind: os.path.join(tmp, f"{kind}.dcm") for kind in ("seg", "sr", "rtstruct")}
            seg = write_seg(
                sources,
                frames,
                names,
                files["seg"],
                algorithm=algorithm,
                series_description="MONAI Label wholebody (batch)",
                label_tag=label_tag,
            )
            # The frames (slice, row, column) are the NIfTI's voxels (i, j, k) reversed.
            measured = measure_on_image(frames.transpose(2, 1, 0), image, {s["value"]: s["name"] for s in seg["segments"]})
            sr = write_sr(files["seg"], sources, seg["segments"], measured, files["sr"], algorithm=algorithm)
            stored = {"seg": seg["SeriesInstanceUID"], "segments": len(seg["segments"]), "measurement_report": sr["SeriesInstanceUID"]}
            if rtstruct:
                stored["rtstruct"] = write_rtstruct(sources, frames, names, files["rtstruct"], algorithm=algorithm)["SeriesInstanceUID"]
            datasets = [pydicom.dcmread(files[kind]) for kind in ("seg", "sr", "rtstruct") if os.path.exists(files[kind])]
            with store._connection.answering(f"storing the DICOM SEG of {series_uid}"):
                response = client.store_instances(datasets)
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise RuntimeError(f"the PACS at {self.url} refused the results of {series_uid}: {failed[0]}")
        return stored

    def describe(self) -> str:
        return self.url

    def _search_filter(self) -> dict[str, Any]:
        from monailabel.config import settings

        return dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER)

    def _connection(self):
        """(DICOMweb client, the server's PACS datastore on it) of this process. The datastore's
        ``_pacs`` turns PACS failures into the one-line 502/503 details the server answers with, and
        ``_label_frames`` puts a label on the series' own frames as the server's label saves do."""
        key = (self.url, self.cache)
        if key not in _CONNECTIONS:
            from monailabel.config import settings

            from lib.pacs.connection import make_client
            from lib.pacs.datastore import PacsDatastore

            prefixes = {"qido": settings.MONAI_LABEL_QIDO_PREFIX, "wado": settings.MONAI_LABEL_WADO_PREFIX, "stow": settings.MONAI_LABEL_STOW_PREFIX}
            client = make_client(self.url, self.auth, self.timeout_s, prefixes)
            _CONNECTIONS[key] = (client, PacsDatastore(client, search_filter=self._search_filter(), cache_path=self.cache))
        return _CONNECTIONS[key]


# One connection per PACS and cache in each process (the datastore's download locks and cache index live there).
_CONNECTIONS: dict[tuple[str, str], tuple[Any, Any]] = {}


def open_studies(studies: str, cache: str, credentials: str | None = None, timeout_s: float = 60.0):
    """``studies``: a folder, or the URL of a DICOMweb service (credentials as the server reads them:
    ``credentials`` = a ``user:password`` file, else MONAI_LABEL_DICOMWEB_USERNAME / _PASSWORD)."""
    if studies.startswith(("http://", "https://")):
        from lib.conf import Conf
        from lib.pacs.setup import read_credentials

        auth = read_credentials(Conf({"dicomweb_credentials": credentials} if credentials else {}))
        return DicomwebStudies(studies.rstrip("/"), os.path.abspath(cache), auth, timeout_s)
    if not os.path.isdir(studies):
        raise BatchError(f"--studies {studies}: not a folder nor an http(s) URL of a DICOMweb service")
    return FolderStudies(studies)
