"""The prediction an annotator starts from, kept as the study's ``original`` label with the model version
that made it and when it was served. Kept on the server's disk only (a DICOMweb datastore does not send it
to the PACS); it replaces the previous prediction of the study, whose copy is not kept."""

from __future__ import annotations

import glob
import logging
import os
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.versions.store import known_stores

logger = logging.getLogger(__name__)

SERVED_TAG = DefaultLabelTag.ORIGINAL.value


def model_version(checkpoint: str | None) -> Any:
    """The version a checkpoint file is: its number when it is a versioned served file, ``"official"`` for
    the bundle's file, None when untrained weights (no file) ran."""
    if not checkpoint:
        return None
    store = known_stores().get(os.path.abspath(checkpoint))
    return store.state()["serving"] if store else "official"


def keep_served(datastore: Datastore, image_id: str, label_file: str, model: str, version: Any, label_names: dict, client: str | None) -> None:
    info = {"model": model, "version": version, "served_at": time.time(), "client": client, "label_names": label_names}
    store = getattr(datastore, "_store_label", None) or datastore.save_label  # local only: never a SEG to the PACS
    store(image_id, label_file, SERVED_TAG, info)
    history = os.path.join(os.path.dirname(datastore.get_label_uri(image_id, SERVED_TAG)), "history")
    for old in glob.glob(os.path.join(glob.escape(history), glob.escape(image_id) + ".*")):
        os.remove(old)


def served(datastore: Datastore, image_id: str) -> tuple[str, dict[str, Any]] | None:
    """(file, info) of the prediction last served for a study, if any."""
    uri = datastore.get_label_uri(image_id, SERVED_TAG)
    if not uri or not os.path.exists(uri):
        return None
    return uri, datastore.get_label_info(image_id, SERVED_TAG) or {}
