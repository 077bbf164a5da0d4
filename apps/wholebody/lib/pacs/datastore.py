"""Studies from a DICOMweb PACS (Orthanc, DCM4CHEE, a cloud DICOM store), labels back as DICOM SEG.

``--studies http://127.0.0.1:8042/dicom-web`` makes MONAI Label 0.8.5 use its DICOMWebDatastore,
which at start-up downloads dcmqi from GitHub (crashes offline), fetches series as explicit VR
little endian (Orthanc cannot transcode JPEG 2000 without its GDCM plugin: HTTP 500), codes every
segment as "Spleen", caches the study list for two hours, answers an unreachable PACS with a
500 and a traceback, and drops a label it could not upload. This subclass:

- fetches series in their stored transfer syntax (``transfer-syntax=*``) and converts them to
  NIfTI once (SimpleITK/GDCM decodes JPEG 2000; pylibjpeg-openjpeg is there for pydicom);
- writes DICOM SEG with highdicom (``lib.pacs.seg``): named segments with SNOMED CT codes,
  referencing the source series; no dcmqi;
- keeps every saved label on disk first, then uploads it (STOW-RS); while the PACS is down the
  SEG waits in ``<cache>/pending/`` and a background thread retries, also after a restart;
- answers requests that need an unreachable PACS with 503 and one line that says what to do,
  a refused login with 502, an unknown series with 404;
- checks ids as the local datastore does (``lib.server.errors.check_id``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np
import requests
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.others.generic import md5_digest
from pydicom.dataset import Dataset

from lib.conf import Conf, ConfError
from lib.datastore.atomic import write_json_atomically
from lib.datastore.local import OneLabelPerTag
from lib.datastore.shared import SharedLocalDatastore
from lib.server.errors import NotFoundError, check_id

logger = logging.getLogger(__name__)

ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class PacsUnavailable(HTTPException):
    def __init__(self, detail: str):
        super().__init__(status_code=503, detail=detail)


class PacsRefused(HTTPException):
    def __init__(self, detail: str):
        super().__init__(status_code=502, detail=detail)


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """requests has no session-wide timeout; a PACS that hangs must not hang the server."""

    def __init__(self, timeout: tuple[float, float], **kwargs):
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def make_client(url: str, auth: tuple[str, str] | None, timeout_s: float, prefixes: Mapping[str, Optional[str]]):
    if "googleapis.com" in url:  # Google Cloud Healthcare: the machine's Google credentials, as stock
        from dicomweb_client.ext.gcp.session_utils import create_session_from_gcp_credentials

        session = create_session_from_gcp_credentials()
    else:
        session = requests.Session()
        session.auth = auth
    adapter = _TimeoutAdapter((min(10.0, timeout_s), timeout_s))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    client = DICOMwebClientX(
        url=url,
        session=session,
        qido_url_prefix=prefixes.get("qido"),
        wado_url_prefix=prefixes.get("wado"),
        stow_url_prefix=prefixes.get("stow"),
    )
    client.set_http_retry_params(retry=False)  # our own retry loop; don't stall a request
    return client


class PacsDatastore(OneLabelPerTag, SharedLocalDatastore, DICOMWebDatastore):
    def __init__(
        self,
        client,
        search_filter: Dict[str, Any],
        cache_path: Optional[str] = None,
        refresh_s: float = 30.0,
        retry_s: float = 30.0,
        label_names: Optional[Callable[[dict], Dict[int, str]]] = None,
        app_version: str = "",
    ):
        self._client = client
        self._url = client.base_url
        self._search_filter = search_filter
        self._fetch_by_frame = False
        self._convert_to_nifti = True
        self._refresh_s = refresh_s
        self._retry_s = retry_s
        self._label_names = label_names or (lambda info: {})
        self._app_version = app_version

        path = cache_path or os.path.join(pathlib.Path.home(), ".cache", "monailabel", "dicom", md5_digest(self._url))
        # LocalDatastore directly: the stock DICOMWebDatastore.__init__ also watches the cache folder.
        LocalDatastore.__init__(self, datastore_path=path, auto_reload=False)
        self._pending_dir = os.path.join(path, "pending")
        self._failed_dir = os.path.join(self._pending_dir, "refused")
        os.makedirs(self._failed_dir, exist_ok=True)
        logger.info(f"DICOMweb datastore {self._url}; cache {path}")

        self._lock = threading.RLock()
        self._series_locks: Dict[str, threading.Lock] = {}
        self._cache: Dict[str, tuple[float, Any]] = {}
        self._seg_refs: Dict[str, Optional[str]] = {}  # SEG series -> referenced image series (immutable)
        self._last_error: Optional[str] = None
        self._known_images: List[str] = []
        self._stop = threading.Event()
        self._retry_thread = threading.Thread(target=self._retry_loop, name="PACS-upload-retry", daemon=True)
        self._retry_thread.start()

    # ------------------------------------------------------------------ errors and caching
    @contextmanager
    def _pacs(self, what: str) -> Iterator[None]:
        """Turns the PACS's failures into one-line HTTP answers (and remembers the last one)."""
        try:
            yield
            self._last_error = None
        except (requests.ConnectionError, requests.Timeout) as e:
            self._last_error = (
                f"the PACS at {self._url} is unreachable ({type(e).__name__}) while {what}; "
                "check that it is running and reachable from this server, then retry"
            )
            raise PacsUnavailable(self._last_error) from None
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            body = (e.response.text or "").strip().replace("\n", " ")[:200] if e.response is not None else ""
            if status in (401, 403):
                self._last_error = (
                    f"the PACS at {self._url} refused the credentials (HTTP {status}) while {what}: set "
                    "MONAI_LABEL_DICOMWEB_USERNAME / MONAI_LABEL_DICOMWEB_PASSWORD or --conf dicomweb_credentials FILE"
                )
                raise PacsRefused(self._last_error) from None
            if status in (502, 503, 504):
                self._last_error = f"the PACS at {self._url} is unavailable (HTTP {status}) while {what}; retry later"
                raise PacsUnavailable(self._last_error) from None
            self._last_error = None  # it answered: a refusal of this request, not an outage
            raise PacsRefused(f"the PACS at {self._url} answered HTTP {status} while {what}: {body}") from None

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
        """At start-up: a wrong URL or refused credentials stop the server; an unreachable PACS
        is logged (the server starts, and requests that need the PACS answer 503)."""
        try:
            with self._pacs("checking the connection at start-up"):
                self._client.search_for_studies(limit=1)
        except PacsRefused as e:
            raise ConfError(f"--studies {self._url}: {e.detail}") from None
        except PacsUnavailable as e:
            logger.error(
                f"{e.detail}. The server starts anyway: requests that need the PACS answer 503 until it is back; "
                f"labels saved meanwhile are kept in {self._pending_dir} and uploaded when it answers (every {self._retry_s:g} s)"
            )
        else:
            logger.info(f"PACS at {self._url} answers")

    # ------------------------------------------------------------------ images
    def _series(self) -> List[Dict[str, Any]]:
        with self._pacs("listing the series"):
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

    def _series_meta(self, series_id: str) -> Dataset:
        with self._pacs(f"looking up series {series_id}"):
            found = [
                s
                for s in self._client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
                if s.get("0020000E", {}).get("Value") == [series_id]
            ]
        if not found:
            raise NotFoundError(f"series '{series_id}' not found in the PACS at {self._url}")
        return Dataset.from_json(found[0])

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
            meta = self._series_meta(image_id)
            modality, wanted = str(meta.get("Modality", "")), self._search_filter.get("Modality")
            if modality == "SEG" or (wanted and modality != wanted):
                raise NotFoundError(f"series '{image_id}' is {modality or 'of no modality'}; this server serves {wanted or 'image'} series")
            image_dir = self._download_series(str(meta.StudyInstanceUID), image_id, self._image_dir(image_id))
            nifti = self._to_nifti(image_dir)
            try:
                SharedLocalDatastore.add_image(self, image_id, nifti, self._info_from_meta(meta))
            finally:
                os.unlink(nifti)
            return LocalDatastore.get_image_uri(self, image_id)

    def _download_series(self, study_id: str, series_id: str, target: str) -> str:
        start = time.time()
        with self._pacs(f"downloading series {series_id}"):
            instances = self._client.retrieve_series(study_id, series_id, media_types=ANY_TRANSFER_SYNTAX)
        if not instances:
            raise NotFoundError(f"series '{series_id}' has no instances in the PACS")
        tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(target))
        for ds in instances:
            ds.save_as(os.path.join(tmp, f"{check_id(str(ds.SOPInstanceUID), 'SOP Instance UID')}.dcm"))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        logger.info(f"Series {series_id}: {len(instances)} instances in {time.time() - start:.1f} s")
        return target

    @staticmethod
    def _to_nifti(series_dir: str) -> str:
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

    @staticmethod
    def _info_from_meta(meta: Dataset) -> Dict[str, Any]:
        info = {"SeriesInstanceUID": str(meta.SeriesInstanceUID)}
        for field in ("StudyInstanceUID", "StudyDate", "StudyTime", "Modality", "PatientID", "SeriesDescription"):
            value = meta.get(field)
            info[field] = str(value.value if hasattr(value, "value") else value) if value else "UNK"
        return info

    def source_files(self, image_id: str) -> List[str]:
        """The series' DICOM files in the order of the NIfTI's slices (GDCM's sort, as converted)."""
        import SimpleITK as sitk

        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(self._image_dir(image_id)))

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
        seg_file = os.path.join(self._pending_dir, f"{image_id}.{time.time_ns()}.dcm")
        model = label_info.get("model") or (label_info.get("params") or {}).get("model")
        try:
            from lib.pacs.seg import write_seg

            seg = write_seg(
                self.source_files(image_id),
                frames,
                names,
                seg_file + ".part",
                algorithm=f"MONAI Label {model}" if model else None,
                version=self._app_version,
                series_description=f"MONAI Label {model}" if model else "MONAI Label",
                content_creator=label_info.get("user"),
                label_tag=label_tag,
            )
        except ValueError as e:
            raise HTTPException(status_code=422, detail=f"cannot write the label as DICOM SEG: {e}") from None
        write_json_atomically(seg_file + ".json", {"image": image_id, "seg": seg, "saved": time.time()})
        os.replace(seg_file + ".part", seg_file)

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
            }
        )
        label_id = self._store_label(image_id, label_filename, label_tag, label_info)
        with self._lock:
            self._seg_refs[seg["SeriesInstanceUID"]] = image_id if final else None

        # 3. Upload now; on failure the retry thread keeps trying.
        self.flush_pending()
        return label_id

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
        return sorted(f for f in os.listdir(self._pending_dir) if f.endswith(".dcm"))

    def _queued(self, folder: str) -> List[Dict[str, Any]]:
        """What waits in ``pending/`` (or was refused): [{image, seg: {SeriesInstanceUID ...}}]."""
        found = []
        for name in sorted(os.listdir(folder)):
            if name.endswith(".dcm.json"):
                try:
                    with open(os.path.join(folder, name)) as f:
                        found.append(json.load(f))
                except (OSError, ValueError):
                    continue  # uploaded (and removed) by another process meanwhile
        return found

    def flush_pending(self) -> int:
        """Uploads waiting SEGs in the order they were saved; returns how many were stored.
        The pending folder is the only record: task subprocesses (training, scoring) open the same
        cache, so one process at a time uploads (a file lock) and none keeps the status in memory."""
        import pydicom
        from filelock import FileLock, Timeout

        stored = 0
        try:
            lock = FileLock(os.path.join(self._pending_dir, ".upload.lock"), timeout=0)
            lock.acquire()
        except Timeout:
            return 0  # another process is uploading
        try:
            for name in self.pending_uploads():
                path = os.path.join(self._pending_dir, name)
                meta_file = path + ".json"
                try:
                    with open(meta_file) as f:
                        meta = json.load(f)
                    dataset = pydicom.dcmread(path)
                except FileNotFoundError:
                    continue
                try:
                    with self._pacs(f"uploading the DICOM SEG of {meta.get('image', '?')}"):
                        response = self._client.store_instances([dataset])
                except PacsUnavailable as e:
                    logger.warning(f"{e.detail}: {len(self.pending_uploads())} label(s) wait in {self._pending_dir}")
                    break
                except PacsRefused as e:
                    if "credentials" in e.detail:
                        logger.error(e.detail)
                        break
                    response = {"FailedSOPSequence": [e.detail]}
                failed = response.get("FailedSOPSequence") if response is not None else None
                if failed:
                    logger.error(f"the PACS refused the SEG {name} ({failed[0]}); it is kept in {self._failed_dir}")
                    for p in (path, meta_file):
                        shutil.move(p, os.path.join(self._failed_dir, os.path.basename(p)))
                    continue
                os.unlink(meta_file)
                os.unlink(path)
                stored += 1
                logger.info(f"DICOM SEG of {meta.get('image')} stored in the PACS (series {meta['seg']['SeriesInstanceUID']})")
        finally:
            lock.release()
        if stored:
            self._invalidate()
        return stored

    def _retry_loop(self) -> None:
        while not self._stop.wait(self._retry_s):
            try:
                if self.pending_uploads():
                    self.flush_pending()
            except Exception as e:  # never let the thread die
                logger.error(f"PACS upload retry failed: {e}")

    def close(self) -> None:
        self._stop.set()

    def _seg_state(self, seg_uid: Optional[str]) -> str:
        if not seg_uid:
            return "none"
        if any(q["seg"]["SeriesInstanceUID"] == seg_uid for q in self._queued(self._pending_dir)):
            return "pending"
        if any(q["seg"]["SeriesInstanceUID"] == seg_uid for q in self._queued(self._failed_dir)):
            return "refused"
        return "stored"

    def _has_pending(self, image_id: str) -> bool:
        return any(q.get("image") == image_id for q in self._queued(self._pending_dir))

    def upload_status(self, image_id: str) -> Dict[str, Any]:
        label = self._datastore.label(image_id, DefaultLabelTag.FINAL)
        seg_uid = label.info.get("SeriesInstanceUID") if label else None
        status = self._seg_state(seg_uid)
        answer: Dict[str, Any] = {"status": status, "seg_series": seg_uid}
        if status == "pending":
            answer["detail"] = (
                f"not in the PACS yet ({self._last_error or 'upload waiting'}): the label is kept on this server "
                f"and uploaded when the PACS answers (retry every {self._retry_s:g} s)"
            )
        elif status == "refused":
            answer["detail"] = f"the PACS refused the SEG; it is kept in {self._failed_dir} (see the server log)"
        return answer

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        info = dict(LocalDatastore.get_label_info(self, label_id, label_tag) or {})
        if label_tag == DefaultLabelTag.FINAL and info:
            info["pacs"] = self._seg_state(info.get("SeriesInstanceUID"))
        return info

    def _seg_series(self) -> Dict[str, tuple[Optional[str], float]]:
        """SEG series in the PACS -> (the image series it references, when it was made as epoch
        seconds); the reference is read from the metadata once per SEG (SEGs do not change).
        A model's output stored under another tag than final references nothing here."""
        from lib.pacs.seg_tags import is_training_label

        def compute():
            with self._pacs("listing the segmentations"):
                segs = self._client.search_for_series(
                    search_filters={"Modality": "SEG"}, fields=["SeriesDate", "SeriesTime"], get_remaining=True
                )
            result = {}
            for item in segs:
                ds = Dataset.from_json(item)
                seg_uid = str(ds.SeriesInstanceUID)
                if seg_uid not in self._seg_refs:
                    with self._pacs(f"reading segmentation {seg_uid}"):
                        meta = self._client.retrieve_series_metadata(str(ds.StudyInstanceUID), seg_uid)
                    first = Dataset.from_json(meta[0]) if meta else Dataset()
                    ref = first.get("ReferencedSeriesSequence") if is_training_label(first) else None
                    self._seg_refs[seg_uid] = str(ref[0].SeriesInstanceUID) if ref else None
                result[seg_uid] = (self._seg_refs[seg_uid], _dicom_epoch(ds.get("SeriesDate"), ds.get("SeriesTime")))
            return result

        return self._cached("segs", compute)

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

    def _download_labeled_data(self) -> None:
        """Before training: an image whose newest SEG in the PACS is newer than the label kept here
        (saved on another workstation, or none here) gets that SEG as its label. Labels saved here
        and not yet uploaded always stay."""
        try:
            segs = self._seg_series()
            images = set(self.list_images())
        except HTTPException as e:
            logger.warning(f"{e.detail}: training uses the labels kept on this server")
            return
        newest: Dict[str, tuple[float, str]] = {}
        for seg_uid, (image_id, made) in segs.items():
            if image_id in images and made >= newest.get(image_id, (-1.0, ""))[0]:
                newest[image_id] = (made, seg_uid)
        for image_id, (made, seg_uid) in newest.items():
            label = self._datastore.label(image_id, DefaultLabelTag.FINAL)
            info = label.info if label else {}
            if label and (self._has_pending(image_id) or info.get("SeriesInstanceUID") == seg_uid):
                continue
            if label and made <= float(info.get("ts", 0)):
                continue
            try:
                self._import_seg(image_id, seg_uid)
            except HTTPException as e:
                logger.warning(f"label of {image_id} not imported from SEG {seg_uid}: {e.detail}")

    def _import_seg(self, image_id: str, seg_uid: str) -> None:
        import SimpleITK as sitk

        from lib.pacs.seg import read_seg

        image_uri = self.get_image_uri(image_id)
        meta = self._series_meta(seg_uid)
        with tempfile.TemporaryDirectory() as tmp:
            seg_dir = self._download_series(str(meta.StudyInstanceUID), seg_uid, os.path.join(tmp, "seg"))
            seg_file = os.path.join(seg_dir, os.listdir(seg_dir)[0])
            sources = self.source_files(image_id)
            import pydicom

            uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sources]
            labelmap, segments = read_seg(seg_file, uids)
            reference = sitk.ReadImage(image_uri)
            label = sitk.GetImageFromArray(labelmap.astype(np.uint8 if labelmap.max() < 256 else np.uint16))
            label.CopyInformation(reference)
            out = os.path.join(tmp, f"{image_id}.nii.gz")
            sitk.WriteImage(label, out, True)
            info = {
                "label_info": [segment.as_info() for segment in segments],
                "SeriesInstanceUID": seg_uid,
                "Modality": "SEG",
            }
            self._store_label(image_id, out, DefaultLabelTag.FINAL, info)
        logger.info(f"Label of {image_id} imported from SEG {seg_uid}")

    def datalist(self, full_path=True) -> List[Dict[str, Any]]:
        self._download_labeled_data()
        return LocalDatastore.datalist(self, full_path)

    # ------------------------------------------------------------------ listing
    def status(self) -> Dict[str, Any]:
        pacs: Dict[str, Any] = {"url": self._url, "pending_uploads": len(self.pending_uploads())}
        try:
            images = self.list_images()
            labeled = self.get_labeled_images()
            # The lists may come from the cache: the last exchange with the PACS says more.
            pacs["reachable"] = self._last_error is None
            if self._last_error:
                pacs["error"] = self._last_error
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


def _dicom_epoch(date, time_) -> float:
    """DICOM DA + TM (local time) -> epoch seconds; 0 when missing."""
    import datetime

    date = str(getattr(date, "value", date) or "").strip()
    time_ = str(getattr(time_, "value", time_) or "").strip().split(".")[0].ljust(6, "0")[:6]
    if len(date) != 8:
        return 0.0
    try:
        return datetime.datetime.strptime(date + time_, "%Y%m%d%H%M%S").timestamp()
    except ValueError:
        return 0.0


# ---------------------------------------------------------------------- set-up from the app
def read_credentials(options: Conf) -> tuple[str, str] | None:
    """PACS login from ``--conf dicomweb_credentials FILE`` (one line ``user:password``), else from
    the environment or MONAI Label's ``.env`` (MONAI_LABEL_DICOMWEB_USERNAME / _PASSWORD, or
    MONAI_LABEL_DATASTORE_USERNAME / _PASSWORD). Never from the code or the command line."""
    from monailabel.config import settings

    path = options.raw("dicomweb_credentials")
    if path:
        path = os.path.expanduser(path)
        try:
            line = open(path).readline().strip()
        except OSError as e:
            raise ConfError(f"'dicomweb_credentials': cannot read {path}: {e.strerror}") from None
        user, sep, password = line.partition(":")
        if not (sep and user and password):
            raise ConfError(f"'dicomweb_credentials': {path} must hold one line 'user:password'")
        if os.stat(path).st_mode & 0o077:
            logger.warning(f"{path} (PACS credentials) is readable by other users: chmod 600 it")
        return user, password
    user = settings.MONAI_LABEL_DICOMWEB_USERNAME or settings.MONAI_LABEL_DATASTORE_USERNAME
    password = settings.MONAI_LABEL_DICOMWEB_PASSWORD or settings.MONAI_LABEL_DATASTORE_PASSWORD
    if bool(user) != bool(password):
        raise ConfError("PACS credentials: set both MONAI_LABEL_DICOMWEB_USERNAME and MONAI_LABEL_DICOMWEB_PASSWORD")
    return (user, password) if user else None


def label_names_for(model_labels: Mapping[str, Mapping[str, int]]) -> Callable[[dict], Dict[int, str]]:
    """Segment names of a saved label: the names sent with it (Slicer's ``label_info``, an infer
    result's ``label_names``), else the labels of the model it names; else none (generic)."""

    def names(info: dict) -> Dict[int, str]:
        from lib.labels.saved import saved_segments

        named = {s.value: s.name for s in saved_segments(info or {}) if s.layer == 0}
        if not named:
            model = (info or {}).get("model") or ((info or {}).get("params") or {}).get("model")
            named = {int(v): str(k) for k, v in (model_labels.get(model) or {}).items()}
        return named

    return names


def create(url: str, options: Conf, model_labels: Mapping[str, Mapping[str, int]], version: str) -> PacsDatastore:
    from monailabel.config import settings

    auth = read_credentials(options)
    if auth:
        # MONAI Label's /proxy/dicom (what OHIF talks to) reads these settings.
        settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD = auth
    cache = (
        options.raw("dicomweb_cache")
        or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH
        or settings.MONAI_LABEL_DATASTORE_CACHE_PATH
        or None
    )
    client = make_client(
        url,
        auth,
        options.float("dicomweb_timeout_s", 60.0, low=1),
        {"qido": settings.MONAI_LABEL_QIDO_PREFIX, "wado": settings.MONAI_LABEL_WADO_PREFIX, "stow": settings.MONAI_LABEL_STOW_PREFIX},
    )
    store = PacsDatastore(
        client,
        search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        cache_path=os.path.abspath(os.path.expanduser(cache.strip())) if cache and cache.strip() else None,
        refresh_s=options.float("dicomweb_refresh_s", 30.0, low=0),
        retry_s=options.float("dicomweb_retry_s", 30.0, low=0.5),
        label_names=label_names_for(model_labels),
        app_version=version,
    )
    store.check_connection()
    return store
