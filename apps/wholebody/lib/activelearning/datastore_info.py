"""Image info shared between the server process and background task processes.

MONAI Label's LocalDatastore keeps ``datastore_v2.json`` in memory and writes all of it back on
every change. A scoring task runs in its own process with its own copy: written blindly, its
scores would drop a label the server saved meanwhile, and the server's next write would drop
the scores unless the file watcher (``MONAI_LABEL_DATASTORE_AUTO_RELOAD``) reloaded them first.
So both sides re-read the file (only when its mtime changed) before they read or write info.
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore

logger = logging.getLogger(__name__)


def reload(datastore: Datastore) -> None:
    """Pick up what other processes wrote; a no-op for datastores without a local file."""
    reread = getattr(datastore, "_init_from_datastore_file", None)
    if callable(reread):
        reread()


def update_image_info(datastore: Datastore, image_id: str, info: dict[str, Any]) -> bool:
    """``datastore.update_image_info`` on the latest file, so nothing another process wrote is lost;
    False when the image is gone.
    (Between the re-read and the write there is a window of a few milliseconds: MONAI Label's file
    lock is not re-entrant, so both cannot happen under one lock without its private internals.)"""
    reload(datastore)
    if image_id not in datastore.list_images():
        return False
    datastore.update_image_info(image_id, info)
    return True
