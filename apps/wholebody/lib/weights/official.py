"""One official checkpoint as the app sees it: present, being fetched, or missing."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from lib.conf import Conf
from lib.versions.store import VersionStore
from lib.weights.download import DEFAULT_BASE_URL, OFFICIAL_WEIGHTS, ensure_weights

logger = logging.getLogger(__name__)

# ``--conf <option> FILE`` serves that file instead of the bundle layout's (never downloaded over). Spelled
# out, not computed, so that a test can list every option the app reads.
PATH_OPTIONS = {
    "wholebody_highres": "wholebody_highres_path",
    "wholebody_lowres": "wholebody_lowres_path",
    "spleen": "spleen_path",
    "vista3d": "vista3d_path",
}


class OfficialCheckpoint:
    """The download runs in a background thread so that start-up never waits on the network;
    the infer tasks look for the file on every request and pick it up once it lands."""

    def __init__(self, key: str, model_dir: str, conf: Conf, trained_path: str):
        self.entry = OFFICIAL_WEIGHTS[key]
        override = conf.raw(PATH_OPTIONS[key])
        self.path = os.path.abspath(override) if override else os.path.join(model_dir, self.entry.relative_path)
        self.trained_path = trained_path
        # Every training run that publishes is a version (lib/versions/); the trained file is the one served.
        self.versions = VersionStore(trained_path, keep=conf.int("max_model_versions", 10, minimum=2))
        self._model_dir = model_dir
        self._base_url = conf.raw("weights_url", DEFAULT_BASE_URL)
        self._download = conf.bool("download_weights", True) and not override
        self._message = "download pending"
        self._thread: threading.Thread | None = None

    @property
    def paths(self) -> list[str]:
        """Most preferred last, the order BasicInferTask uses: a model trained here beats the official one."""
        return [self.path, self.trained_path]

    def fetch_in_background(self) -> None:
        if os.path.exists(self.path) or not self._download:
            return
        self._thread = threading.Thread(target=self._fetch, name=f"weights-{self.entry.key}", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def _fetch(self) -> None:
        status = ensure_weights(self.entry, self._model_dir, self._base_url, download=True)
        self._message = status.message
        (logger.info if status.present else logger.warning)(status.message)

    def status(self) -> dict[str, Any]:
        official = os.path.exists(self.path)
        trained = os.path.exists(self.trained_path)
        version = self.versions.state()
        if trained:
            number = f" (version {version['serving']}{', pinned' if version['pinned'] else ''})" if version["serving"] else ""
            message = f"using weights trained here{number}: {self.trained_path}"
        elif official:
            message = f"using official weights: {self.path}"
        elif self._thread and self._thread.is_alive():
            message = f"UNTRAINED while downloading the official file to {self.path}"
        else:
            message = (
                f"UNTRAINED: no weights; put the official {self.entry.url_name} (md5 {self.entry.md5}) at {self.path} "
                f"or train from saved labels. {self._message if self._download else ''}"
            ).strip()
        return {
            "official": self.path,
            "trained": self.trained_path,
            "untrained": not (official or trained),
            "version": version,
            "message": message,
        }
