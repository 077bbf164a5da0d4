"""The PACS datastore as the app opens it: credentials, segment names of saved labels, the connection."""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Mapping

from lib.conf import Conf, ConfError
from lib.pacs.connection import make_client
from lib.pacs.datastore import PacsDatastore

logger = logging.getLogger(__name__)

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
        rtstruct=options.bool("dicomweb_rtstruct", False),
    )
    store.check_connection()
    return store
