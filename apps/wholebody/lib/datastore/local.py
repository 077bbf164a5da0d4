"""A local datastore that refuses what would lose or corrupt a study or a label."""

from __future__ import annotations

import logging
import os
import time

from fastapi import HTTPException

from lib.datastore.atomic import copy_atomically
from lib.datastore.image_check import check_ct_file, check_label_file, extension, read_header
from lib.datastore.shared import SharedLocalDatastore
from lib.server.errors import NotFoundError, check_id

logger = logging.getLogger(__name__)


class CheckedLocalDatastore(SharedLocalDatastore):
    """Stock LocalDatastore writes wherever an id points (``../x``), replaces an image that has
    the same id, and accepts any bytes as a CT. Here ids are plain names, uploads must be 3D CT,
    an existing image is never replaced, and a label that replaces another keeps the old one
    under ``labels/<tag>/history/``."""

    def add_image(self, image_id, image_filename, image_info):
        default_id, _ = self._to_id(os.path.basename(image_filename))
        image_id = check_id(image_id or default_id, "image id")
        with self.transaction():  # checked and added in one step: two uploads of one id never both pass
            if image_id in self._datastore.objects:
                raise HTTPException(status_code=409, detail=f"image '{image_id}' already exists; delete it first")
            check_ct_file(image_filename)
            return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id, label_filename, label_tag, label_info):
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        if image_id not in self._datastore.objects:
            raise NotFoundError(f"image '{image_id}' not found")
        image_shape = read_header(self.get_image_uri(image_id)).shape
        check_label_file(label_filename, image_shape)
        with self.transaction():  # the previous label is kept and replaced in one step: concurrent saves lose none
            self._keep_previous(image_id, label_tag)
            return super().save_label(image_id, label_filename, label_tag, label_info)

    def _keep_previous(self, image_id: str, label_tag: str) -> None:
        previous = self.get_label_uri(image_id, label_tag)
        if previous and os.path.exists(previous):
            history = os.path.join(os.path.dirname(previous), "history")
            os.makedirs(history, exist_ok=True)
            ext = extension(previous)
            copy_atomically(previous, os.path.join(history, f"{image_id}.{int(time.time() * 1000)}{ext}"))

    def get_image_uri(self, image_id):
        check_id(image_id, "image id")
        return super().get_image_uri(image_id)
