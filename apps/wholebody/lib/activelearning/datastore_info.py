"""Image info shared between the server process and background task processes.

A scoring task runs in its own process with its own copy of ``datastore_v2.json``. The local datastore
(lib/datastore/shared.py) makes every change a transaction on the latest file under a lock that both
processes take, so neither side's writes drop the other's; readers pick up what the other process
wrote by re-reading the file when it changed.
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import ImageNotFoundException

logger = logging.getLogger(__name__)


def reload(datastore: Datastore) -> None:
    """Pick up what other processes wrote; a no-op for datastores without a local file."""
    reread = getattr(datastore, "_init_from_datastore_file", None)
    if callable(reread):
        reread()


def update_image_info(datastore: Datastore, image_id: str, info: dict[str, Any]) -> bool:
    """``datastore.update_image_info`` on the latest file, so nothing another process wrote is lost;
    False when the image is gone."""
    try:
        datastore.update_image_info(image_id, info)
    except ImageNotFoundException:
        return False
    return True
