"""A local datastore that refuses what would lose or corrupt a study or a label."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

from fastapi import HTTPException

from lib.datastore.atomic import copy_atomically
from lib.datastore.image_check import DEFAULT_MAX_VOXELS, SUPPORTED, check_ct_file, extension, read_header
from lib.datastore.label_file import checked_label_info
from lib.datastore.shared import SharedLocalDatastore
from lib.server.errors import NotAvailableError, NotFoundError, check_id

logger = logging.getLogger(__name__)

SEG_NRRD = ".seg.nrrd"


class OneLabelPerTag:
    """For a LocalDatastore (or one built on it): one label per image and tag whatever its format.

    Stock LocalDatastore keys labels by file name, so a label saved as ``.nrrd`` after a ``.nii.gz``
    leaves both on disk, and deleting the newer brings the older back (the folder is re-read).
    Here the label a save replaces, any file in another format that could come back as it, and a
    deleted label move to ``labels/<tag>/history/``, which is never served."""

    _last_saved = threading.local()

    def _store_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        with self.transaction():  # the previous label is kept and replaced in one step: concurrent saves lose none
            previous = self._keep_previous(image_id, label_tag)
            label_id = SharedLocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
            current = self.get_label_uri(image_id, label_tag)
            if previous and os.path.realpath(previous) != os.path.realpath(current):
                os.remove(previous)  # another format: already in history
        self._last_saved.tag = (image_id, label_tag)
        return label_id

    def last_saved_tag(self, image_id: str) -> str | None:
        """The tag this thread's last save of ``image_id`` used (the save endpoint answers through
        ``on_save_label``, which is told the image, not the tag)."""
        saved = getattr(self._last_saved, "tag", None)
        return saved[1] if saved and saved[0] == image_id else None

    def remove_label(self, label_id, label_tag):
        check_id(label_id, "label id")
        check_id(label_tag, "label tag")
        with self.transaction():
            if not self.get_label_uri(label_id, label_tag):
                raise NotFoundError(f"image '{label_id}' has no '{label_tag}' label")
            for path in self._label_files(label_id, label_tag):
                self._to_history(path, label_id, move=True)
            self.refresh()

    def _label_files(self, image_id: str, label_tag: str) -> list[str]:
        """Every file that the stock datastore would take for this image's label, in any format."""
        folder = self._datastore.label_path(label_tag)
        return [p for p in (os.path.join(folder, image_id + ext) for ext in SUPPORTED) if os.path.isfile(p)]

    def _keep_previous(self, image_id: str, label_tag: str) -> str | None:
        """Copies the current label to history and moves there any file in another format that
        could come back as it; returns the current one's path."""
        previous = self.get_label_uri(image_id, label_tag)
        for path in self._label_files(image_id, label_tag):
            self._to_history(path, image_id, move=os.path.realpath(path) != os.path.realpath(previous or ""))
        return previous if previous and os.path.exists(previous) else None

    @staticmethod
    def _to_history(path: str, image_id: str, move: bool) -> None:
        history = os.path.join(os.path.dirname(path), "history")
        os.makedirs(history, exist_ok=True)
        target = os.path.join(history, f"{image_id}.{time.time_ns()}{extension(path)}")
        # A move is one rename (same folder tree); a copy is written whole before it appears.
        (shutil.move if move else copy_atomically)(path, target)


class CheckedLocalDatastore(OneLabelPerTag, SharedLocalDatastore):
    """Stock LocalDatastore writes wherever an id points (``../x``), replaces an image that has
    the same id, and accepts any bytes as a CT and any label of the image's shape. Here ids are
    plain names, uploads must be 3D CT, labels must lie on their image's voxel grid (checked with
    their segments by ``lib.datastore.label_file``), an existing image is never replaced, and an
    image has one label per tag (``OneLabelPerTag``)."""

    max_voxels = DEFAULT_MAX_VOXELS  # what an image or label header may promise; the app sets --conf max_voxels

    def _to_id(self, file: str):
        # ".seg.nrrd" is one extension (stock takes "x.seg" for the id of "x.seg.nrrd").
        if file.lower().endswith(SEG_NRRD):
            return file[: -len(SEG_NRRD)], file[-len(SEG_NRRD) :]
        return super()._to_id(file)

    def add_image(self, image_id, image_filename, image_info):
        default_id, _ = self._to_id(os.path.basename(image_filename))
        image_id = check_id(image_id or default_id, "image id")
        with self.transaction():  # checked and added in one step: two uploads of one id never both pass
            if image_id in self._datastore.objects:
                raise HTTPException(status_code=409, detail=f"image '{image_id}' already exists; delete it first")
            check_ct_file(image_filename, self.max_voxels)
            return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id, label_filename, label_tag, label_info):
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        if image_id not in self._datastore.objects:
            raise NotFoundError(f"image '{image_id}' not found")
        label_info = checked_label_info(label_filename, read_header(self.get_image_uri(image_id)), label_info, self.max_voxels)
        return self._store_label(image_id, label_filename, label_tag, label_info)

    def get_image_uri(self, image_id):
        check_id(image_id, "image id")
        return super().get_image_uri(image_id)

    def get_dataset_archive(self, limit_cases):
        # Stock asserts (500) when no study has a final label: the archive holds labelled studies only.
        if not self.datalist():
            raise NotAvailableError("no study has a final label yet: the dataset archive holds labelled studies only")
        return super().get_dataset_archive(limit_cases)
