"""The PACS upload queue: DICOM objects (SEG, SR, RTSTRUCT) kept on disk first, then stored by STOW-RS.

Each object waits in ``<cache>/pending/`` as ``<image>.<time ns>.<order>-<kind>.dcm`` beside a JSON record
(``{"image", "kind", "series", "info", "saved"}``); names sort in the order they were saved, and the
objects of one save in their ``order`` (the SEG before the SR that references it). While the PACS is down a
background thread retries, also after a restart; an object the PACS refuses moves to ``pending/refused/``.

The folder is the only record: task subprocesses (training, scoring) open the same cache, so one process at
a time uploads (a file lock) and none keeps the status in memory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

from lib.datastore.atomic import write_json_atomically
from lib.pacs.connection import PacsConnection, PacsRefused, PacsUnavailable

logger = logging.getLogger(__name__)


def _series(record: Dict[str, Any]) -> Optional[str]:
    """The record's series (records written before SR existed name only their ``seg``)."""
    return record.get("series") or (record.get("seg") or {}).get("SeriesInstanceUID")


class UploadQueue:
    def __init__(self, connection: PacsConnection, folder: str, retry_s: float, on_stored: Callable[[], None] = lambda: None):
        self.connection = connection
        self.folder = folder
        self.refused_dir = os.path.join(folder, "refused")
        self.retry_s = retry_s
        self._lock_path = os.path.join(folder, ".upload.lock")
        self._on_stored = on_stored
        os.makedirs(self.refused_dir, exist_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._retry_loop, name="PACS-upload-retry", daemon=True)
        self._thread.start()

    def add(self, image_id: str, stamp: int, order: int, kind: str, write: Callable[[str], Dict[str, Any]]) -> tuple[str, Dict[str, Any]]:
        """Queues the object ``write(path)`` writes (returning its UIDs: ``SeriesInstanceUID`` ...); it
        appears whole or not at all. Returns its path in the queue and what ``write`` returned."""
        path = os.path.join(self.folder, f"{image_id}.{stamp}.{order}-{kind.lower()}.dcm")
        info = write(path + ".part")
        write_json_atomically(path + ".json", {"image": image_id, "kind": kind, "series": info["SeriesInstanceUID"], "info": info, "saved": stamp / 1e9})
        os.replace(path + ".part", path)
        return path, info

    @contextmanager
    def held(self) -> Iterator[None]:
        """No upload meanwhile (in any process): objects added together (a SEG, then the SR that reads it
        from the queue) are all there before the first one leaves."""
        from filelock import FileLock

        with FileLock(self._lock_path):
            yield

    def pending(self) -> List[str]:
        return sorted(f for f in os.listdir(self.folder) if f.endswith(".dcm"))

    def records(self, folder: Optional[str] = None) -> List[Dict[str, Any]]:
        """What waits in ``pending/`` (or in ``refused/``)."""
        folder = folder or self.folder
        found = []
        for name in sorted(os.listdir(folder)):
            if name.endswith(".dcm.json"):
                try:
                    with open(os.path.join(folder, name)) as f:
                        found.append(json.load(f))
                except (OSError, ValueError):
                    continue  # uploaded (and removed) by another process meanwhile
        return found

    def state(self, series_uid: Optional[str]) -> str:
        """``none``, ``pending``, ``refused`` or ``stored``: where the object of this series is."""
        if not series_uid:
            return "none"
        if any(_series(r) == series_uid for r in self.records()):
            return "pending"
        if any(_series(r) == series_uid for r in self.records(self.refused_dir)):
            return "refused"
        return "stored"

    def has_pending(self, image_id: str) -> bool:
        return any(r.get("image") == image_id for r in self.records())

    def flush(self) -> int:
        """Uploads waiting objects in the order they were saved; returns how many were stored."""
        import pydicom
        from filelock import FileLock, Timeout

        stored = 0
        try:
            lock = FileLock(self._lock_path, timeout=0)
            lock.acquire()
        except Timeout:
            return 0  # another process is uploading
        try:
            for name in self.pending():
                path = os.path.join(self.folder, name)
                meta_file = path + ".json"
                try:
                    with open(meta_file) as f:
                        meta = json.load(f)
                    dataset = pydicom.dcmread(path)
                except FileNotFoundError:
                    continue
                kind = meta.get("kind", "SEG")
                try:
                    with self.connection.answering(f"uploading the DICOM {kind} of {meta.get('image', '?')}"):
                        response = self.connection.client.store_instances([dataset])
                except PacsUnavailable as e:
                    logger.warning(f"{e.detail}: {len(self.pending())} object(s) wait in {self.folder}")
                    break
                except PacsRefused as e:
                    if "credentials" in e.detail:
                        logger.error(e.detail)
                        break
                    response = {"FailedSOPSequence": [e.detail]}
                failed = response.get("FailedSOPSequence") if response is not None else None
                if failed:
                    logger.error(f"the PACS refused the {kind} {name} ({failed[0]}); it is kept in {self.refused_dir}")
                    for p in (path, meta_file):
                        shutil.move(p, os.path.join(self.refused_dir, os.path.basename(p)))
                    continue
                os.unlink(meta_file)
                os.unlink(path)
                stored += 1
                logger.info(f"DICOM {kind} of {meta.get('image')} stored in the PACS (series {_series(meta)})")
        finally:
            lock.release()
        if stored:
            self._on_stored()
        return stored

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                if self.pending():
                    self.flush()
            except Exception as e:  # never let the thread die
                logger.error(f"PACS upload retry failed: {e}")

    def close(self) -> None:
        self._stop.set()
