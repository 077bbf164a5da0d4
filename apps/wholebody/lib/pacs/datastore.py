"""Studies from a DICOMweb PACS (Orthanc, DCM4CHEE, a cloud DICOM store), labels back as DICOM SEG.

``--studies http://127.0.0.1:8042/dicom-web`` makes MONAI Label 0.8.5 use its DICOMWebDatastore,
which at start-up downloads dcmqi from GitHub (crashes offline), fetches series as explicit VR
little endian (Orthanc cannot transcode JPEG 2000 without its GDCM plugin: HTTP 500), codes every
segment as "Spleen", caches the study list for two hours, answers an unreachable PACS with a
500 and a traceback, and drops a label it could not upload. This subclass:

- fetches series in their stored transfer syntax and converts them to NIfTI once (``lib.pacs.series``);
- writes DICOM SEG with highdicom (``lib.pacs.seg``): named segments with SNOMED CT codes,
  referencing the source series; no dcmqi; beside it a measurement report (SR, ``lib.pacs.sr``: volume
  and mean HU of each segment) and, with ``--conf dicomweb_rtstruct true``, an RT Structure Set
  (``lib.pacs.rtstruct``);
- keeps every saved label on disk first, then uploads it (``lib.pacs.upload_queue``: STOW-RS, retried
  in the background while the PACS is down, also after a restart);
- answers requests that need an unreachable PACS with 503 and one line that says what to do,
  a refused login with 502, an unknown series with 404 (``lib.pacs.connection``);
- imports the newest SEG of the PACS as a label before training (``lib.pacs.seg_import``);
- checks ids as the local datastore does (``lib.server.errors.check_id``).
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.others.generic import md5_digest

from lib.datastore.local import OneLabelPerTag
from lib.datastore.shared import SharedLocalDatastore
from lib.pacs.connection import PacsConnection, PacsUnavailable
from lib.pacs.seg_import import SegImport
from lib.pacs.series import download_series, info_from_meta, series_meta, source_files, to_nifti
from lib.pacs.upload_queue import UploadQueue
from lib.server.errors import NotFoundError, check_id

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class PacsDatastore(SegImport, OneLabelPerTag, SharedLocalDatastore, DICOMWebDatastore):
    def __init__(
        self,
        client,
        search_filter: Dict[str, Any],
        cache_path: Optional[str] = None,
        refresh_s: float = 30.0,
        retry_s: float = 30.0,
        label_names: Optional[Callable[[dict], Dict[int, str]]] = None,
        app_version: str = "",
        rtstruct: bool = False,
    ):
        """``rtstruct``: store an RT Structure Set beside every SEG (the measurement report goes always)."""
        self._client = client
        self._connection = PacsConnection(client)
        self._url = client.base_url
        self._search_filter = search_filter
        self._fetch_by_frame = False
        self._convert_to_nifti = True
        self._refresh_s = refresh_s
        self._label_names = label_names or (lambda info: {})
        self._app_version = app_version
        self._rtstruct = rtstruct

        path = cache_path or os.path.join(pathlib.Path.home(), ".cache", "monailabel", "dicom", md5_digest(self._url))
        # LocalDatastore directly: the stock DICOMWebDatastore.__init__ also watches the cache folder.
        LocalDatastore.__init__(self, datastore_path=path, auto_reload=False)
        logger.info(f"DICOMweb datastore {self._url}; cache {path}")

        self._lock = threading.RLock()
        self._series_locks: Dict[str, threading.Lock] = {}
        self._cache: Dict[str, tuple[float, Any]] = {}
        self._seg_refs: Dict[str, Optional[str]] = {}  # SEG series -> referenced image series (immutable)
        self._known_images: List[str] = []
        self._queue = UploadQueue(self._connection, os.path.join(path, "pending"), retry_s, on_stored=self._invalidate)

    # ------------------------------------------------------------------ caching
    def _cached(self, key: str, compute: Callable[[], Any]) -> Any:
        now = time.time()
        hit = self._cache.get(key)
        if hit and now - hit[0] < self._refresh_s:
            return hit[1]
        value = compute()
        self._cache[key] = (now, value)
        return value

    def _invalidate(self) -> None:
        self._cache.clear()

    def check_connection(self) -> None:
        self._connection.check(self._queue.folder, self._queue.retry_s)

    # ------------------------------------------------------------------ images
    def _series(self) -> List[Dict[str, Any]]:
        with self._connection.answering("listing the series"):
            return self._client.search_for_series(search_filters=self._search_filter, get_remaining=True)

    def list_images(self) -> List[str]:
        def compute():
            ids = []
            for ds in self._series():
                uid = ds.get("0020000E", {}).get("Value", [None])[0]
                if uid:
                    ids.append(str(uid))
            return ids

        try:
            images = list(self._cached("images", compute))
        except PacsUnavailable as e:
            # Background work (scoring, active learning) goes on with what is known: the last list
            # from the PACS, else the series already downloaded. The next call asks the PACS again.
            images = list(self._known_images or LocalDatastore.list_images(self))
            logger.warning(f"{e.detail}; using the {len(images)} series known to this server")
            return images
        self._known_images = images
        return images

    def _series_lock(self, series_id: str) -> threading.Lock:
        with self._lock:
            return self._series_locks.setdefault(series_id, threading.Lock())

    def _image_dir(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id))

    def get_image_uri(self, image_id: str) -> str:
        check_id(image_id, "image id")
        local = LocalDatastore.get_image_uri(self, image_id)
        if local and os.path.exists(local) and os.path.isdir(self._image_dir(image_id)):
            return local  # cached: works while the PACS is down
        with self._series_lock(image_id):
            local = LocalDatastore.get_image_uri(self, image_id)
            if local and os.path.exists(local) and os.path.isdir(self._image_dir(image_id)):
                return local
            meta = series_meta(self._connection, image_id)
            modality, wanted = str(meta.get("Modality", "")), self._search_filter.get("Modality")
            if modality == "SEG" or (wanted and modality != wanted):
                raise NotFoundError(f"series '{image_id}' is {modality or 'of no modality'}; this server serves {wanted or 'image'} series")
            image_dir = download_series(self._connection, str(meta.StudyInstanceUID), image_id, self._image_dir(image_id))
            nifti = to_nifti(image_dir)
            try:
                SharedLocalDatastore.add_image(self, image_id, nifti, info_from_meta(meta))
            finally:
                os.unlink(nifti)
            return LocalDatastore.get_image_uri(self, image_id)

    def source_files(self, image_id: str) -> List[str]:
        """The series' DICOM files in the order of the NIfTI's slices."""
        return source_files(self._image_dir(image_id))

    def add_image(self, image_id, image_filename, image_info):
        raise HTTPException(
            status_code=405,
            detail=f"images come from the PACS at {self._url}: send the series to the PACS (scripts/pacs.py upload)",
        )

    def remove_image(self, image_id):
        raise HTTPException(status_code=405, detail=f"images live in the PACS at {self._url}: delete them there")

    # ------------------------------------------------------------------ labels
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = "") -> str:
        from lib.datastore.image_check import read_header
        from lib.datastore.label_file import checked_label_info

        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        image_uri = self.get_image_uri(image_id)

        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":
            from monailabel.datastore.utils.convert import binary_to_image

            label_filename = binary_to_image(image_uri, label_filename)
        label_info = checked_label_info(label_filename, read_header(image_uri), label_info)

        if int(label_info.get("layers") or 1) > 1:
            raise HTTPException(
                status_code=422,
                detail="overlapping segments (a .seg.nrrd with layers) cannot be stored in the PACS as DICOM SEG yet: "
                "save the label without overlaps",
            )

        # 1. The SEG, written before anything is stored: a label that cannot become one is refused.
        # Other tags than final (a model's output, e.g. /batch/infer) go to the PACS too, marked so
        # that they are never taken for labels to train on (lib.pacs.seg_tags).
        final = label_tag == DefaultLabelTag.FINAL
        names = self._label_names(label_info)
        frames = self._label_frames(image_id, image_uri, label_filename)
        if not final and not frames.any():
            return self._store_label(image_id, label_filename, label_tag, label_info)  # no segment: no SEG
        model = label_info.get("model") or (label_info.get("params") or {}).get("model")
        stamp = time.time_ns()
        with self._queue.held():  # the SEG stays in the queue until its reports, which read it, are there too
            try:
                from lib.pacs.seg import write_seg

                seg_file, seg = self._queue.add(
                    image_id,
                    stamp,
                    0,
                    "SEG",
                    lambda path: write_seg(
                        self.source_files(image_id),
                        frames,
                        names,
                        path,
                        algorithm=f"MONAI Label {model}" if model else None,
                        version=self._app_version,
                        series_description=f"MONAI Label {model}" if model else "MONAI Label",
                        content_creator=label_info.get("user"),
                        label_tag=label_tag,
                    ),
                )
            except ValueError as e:
                raise HTTPException(status_code=422, detail=f"cannot write the label as DICOM SEG: {e}") from None
            reports = self._queue_reports(image_id, image_uri, frames, stamp, seg_file, seg, model)

        # 2. The label on disk, so that nothing is lost while the PACS is down.
        label_info["label_info"] = label_info.get("label_info") or [
            {"name": s["name"], "idx": s["value"], "code": s["code"]} for s in seg["segments"]
        ]
        label_info.update(
            {
                "SeriesInstanceUID": seg["SeriesInstanceUID"],
                "SOPInstanceUID": seg["SOPInstanceUID"],
                "StudyInstanceUID": seg["StudyInstanceUID"],
                "Modality": "SEG",
                "segments": seg["segments"],
                **reports,
            }
        )
        label_id = self._store_label(image_id, label_filename, label_tag, label_info)
        with self._lock:
            self._seg_refs[seg["SeriesInstanceUID"]] = image_id if final else None

        # 3. Upload now; on failure the retry thread keeps trying.
        self._queue.flush()
        return label_id

    def _queue_reports(self, image_id: str, image_uri: str, frames: np.ndarray, stamp: int, seg_file: str, seg: dict, model) -> Dict[str, str]:
        """Beside the SEG, in the same upload: its measurement report (SR) and, with ``dicomweb_rtstruct``,
        its RT Structure Set. Returns their series UIDs (``measurement_report``, ``rtstruct``)."""
        from lib.measurements.on_image import measure_on_image
        from lib.pacs.rtstruct import write_rtstruct
        from lib.pacs.sr import write_sr

        names = {s["value"]: s["name"] for s in seg["segments"]}
        algorithm = f"MONAI Label {model}" if model else "MONAI Label"
        # The frames (slice, row, column) are the NIfTI's voxels (i, j, k) reversed: its converter wrote it so.
        measured = measure_on_image(frames.transpose(2, 1, 0), image_uri, names)
        sources = self.source_files(image_id)
        _, sr = self._queue.add(
            image_id, stamp, 1, "SR",
            lambda path: write_sr(seg_file, sources, seg["segments"], measured, path, algorithm=algorithm, version=self._app_version),
        )  # fmt: skip
        reports = {"measurement_report": sr["SeriesInstanceUID"]}
        if self._rtstruct:
            _, rt = self._queue.add(
                image_id, stamp, 2, "RTSTRUCT",
                lambda path: write_rtstruct(sources, frames, names, path, algorithm=algorithm, version=self._app_version),
            )  # fmt: skip
            reports["rtstruct"] = rt["SeriesInstanceUID"]
        return reports

    def _label_frames(self, image_id: str, image_uri: str, label_filename: str) -> np.ndarray:
        """The label resampled (nearest, identity) on the series' own grid: frames x rows x cols in
        the order of ``source_files``. The image NIfTI was converted from exactly that grid."""
        import SimpleITK as sitk

        reference = sitk.ReadImage(image_uri)
        label = sitk.ReadImage(label_filename)
        if label.GetNumberOfComponentsPerPixel() != 1:
            raise HTTPException(status_code=422, detail="the label must have one component per voxel")
        on_grid = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
        frames = sitk.GetArrayFromImage(on_grid)
        if np.count_nonzero(frames) != np.count_nonzero(sitk.GetArrayViewFromImage(label)):
            raise HTTPException(
                status_code=422,
                detail="the label does not lie on the image's voxel grid (its origin, spacing or direction differ)",
            )
        return frames.astype(np.uint16)

    def pending_uploads(self) -> List[str]:
        return self._queue.pending()

    def flush_pending(self) -> int:
        return self._queue.flush()

    def close(self) -> None:
        self._queue.close()

    def upload_status(self, image_id: str) -> Dict[str, Any]:
        label = self._datastore.label(image_id, DefaultLabelTag.FINAL)
        seg_uid = label.info.get("SeriesInstanceUID") if label else None
        status = self._queue.state(seg_uid)
        answer: Dict[str, Any] = {"status": status, "seg_series": seg_uid}
        if status == "pending":
            answer["detail"] = (
                f"not in the PACS yet ({self._connection.last_error or 'upload waiting'}): the label is kept on this server "
                f"and uploaded when the PACS answers (retry every {self._queue.retry_s:g} s)"
            )
        elif status == "refused":
            answer["detail"] = f"the PACS refused the SEG; it is kept in {self._queue.refused_dir} (see the server log)"
        return answer

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        info = dict(LocalDatastore.get_label_info(self, label_id, label_tag) or {})
        if label_tag == DefaultLabelTag.FINAL and info:
            info["pacs"] = self._queue.state(info.get("SeriesInstanceUID"))
        return info

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        images = set(self.list_images())
        try:
            labeled = {ref for ref, _ in self._seg_series().values() if ref in images}
        except HTTPException:
            labeled = set()
        labeled |= {i for i in LocalDatastore.get_labeled_images(self) if i in images}
        return sorted(labeled)

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        labeled = set(self.get_labeled_images())
        return [i for i in self.list_images() if i not in labeled]

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        check_id(label_id, "label id")
        return LocalDatastore.get_label_uri(self, label_id, label_tag)

    def datalist(self, full_path=True) -> List[Dict[str, Any]]:
        self._download_labeled_data()
        return LocalDatastore.datalist(self, full_path)

    # ------------------------------------------------------------------ listing
    def status(self) -> Dict[str, Any]:
        pacs: Dict[str, Any] = {"url": self._url, "pending_uploads": len(self._queue.pending())}
        try:
            images = self.list_images()
            labeled = self.get_labeled_images()
            # The lists may come from the cache: the last exchange with the PACS says more.
            pacs["reachable"] = self._connection.last_error is None
            if self._connection.last_error:
                pacs["error"] = self._connection.last_error
        except HTTPException as e:
            images = LocalDatastore.list_images(self)
            labeled = LocalDatastore.get_labeled_images(self)
            pacs.update({"reachable": False, "error": e.detail})
        tags: Dict[str, int] = {}
        for obj in self._datastore.objects.values():
            for tag in obj.labels:
                tags[tag] = tags.get(tag, 0) + 1
        return {"total": len(images), "completed": len(labeled), "label_tags": tags, "pacs": pacs}

    def json(self):
        """Every series of the PACS, with what is known locally (downloaded image, labels)."""
        data = LocalDatastore.json(self)
        objects = data.setdefault("objects", {})
        for image_id in self.list_images():
            objects.setdefault(image_id, {"image": {"info": {"SeriesInstanceUID": image_id}}, "labels": {}})
        return data
