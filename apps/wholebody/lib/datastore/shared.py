"""MONAI Label's LocalDatastore for several writers at once: the server's request threads and its task
processes (scoring writes scores, training reads labels), all on one ``datastore_v2.json``.

Stock LocalDatastore keeps the file's content in memory and writes all of it back on every change, in
place: a process writing what it read a while ago drops what another wrote meanwhile, a reader may meet
a half-written file, and a crash while writing leaves one. Labels and images are copied in place too.
Here:

* every change is a transaction: under one lock held across threads and processes (``flock`` on
  ``datastore_v2.json.lock``) the latest file is read, the change made and the file written atomically;
* readers never wait for a writer and never see a change half made: they read the last published
  state, while a transaction works on its own copy, published once it is on disk;
* images and labels are copied in atomically: a file in the datastore is complete or absent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator

from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.exception import ImageNotFoundException

from lib.datastore.atomic import SharedLock, copy_atomically, write_json_atomically

logger = logging.getLogger(__name__)


class SharedLocalDatastore(LocalDatastore):
    # State is kept in __dict__ and created on first use: PacsDatastore calls LocalDatastore.__init__ itself.

    @property
    def _datastore(self) -> LocalDatastoreModel:
        """The transaction's working copy in the thread that runs it, the published state everywhere else."""
        if self.__dict__.get("_writer") == threading.get_ident():
            return self.__dict__["_working"]
        return self.__dict__["_published"]

    @_datastore.setter
    def _datastore(self, model: LocalDatastoreModel) -> None:
        self.__dict__["_working" if self.__dict__.get("_writer") == threading.get_ident() else "_published"] = model

    def _file_lock(self) -> SharedLock:
        lock = self.__dict__.get("_lock_shared")
        if lock is None:
            lock = self.__dict__["_lock_shared"] = SharedLock(self._datastore_config_path + ".lock")
        return lock

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Read the latest file, change, write: nobody else writes in between. Re-entrant."""
        lock = self._file_lock()
        with lock:
            if self.__dict__.get("_writer") == threading.get_ident():
                yield
                return
            self._read_file()
            self.__dict__.update(_working=self._datastore.model_copy(deep=True), _written=None, _writer=threading.get_ident())
            try:
                yield
            finally:
                written = self.__dict__.pop("_written")
                self.__dict__.update(_writer=None, _working=None)
                if written is not None:
                    self.__dict__["_published"] = written

    def _read_file(self, throw_exception: bool = False) -> None:
        """Publish the file's content if it changed since it was last read or written here."""
        try:
            f = open(self._datastore_config_path, "rb")
        except FileNotFoundError:
            return
        with f:
            st = os.fstat(f.fileno())
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature == self.__dict__.get("_signature"):
                return
            try:
                model = LocalDatastoreModel.model_validate_json(f.read())
            except ValueError as e:
                logger.error(f"Failed to load datastore {self._datastore_config_path}: {e}")
                if throw_exception:
                    raise
                return
        model.base_path = self._datastore_path
        self.__dict__.update(_published=model, _signature=signature)

    # --- LocalDatastore's own file handling, replaced ---
    def _init_from_datastore_file(self, throw_exception=False):
        """What other processes wrote. Skipped while a writer of this process is busy (its transaction
        reads the file, and publishes its result); waits only for the first read."""
        if self.__dict__.get("_writer") == threading.get_ident():
            return
        lock = self._file_lock()
        if not lock.acquire(blocking="_signature" not in self.__dict__):
            return
        try:
            self._read_file(throw_exception)
        finally:
            lock.release()

    def _update_datastore_file(self, lock=True):
        with self._file_lock():
            model = self._datastore
            self._ignore_event_config = True  # the stock file watcher (auto reload): this change is ours
            write_json_atomically(self._datastore_config_path, model.model_dump(exclude={"base_path"}), indent=2, default=str)
            st = os.stat(self._datastore_config_path)
            self.__dict__["_signature"] = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self.__dict__.get("_writer") == threading.get_ident():
                self.__dict__["_written"] = model.model_copy(deep=True)

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        """Stock LocalDatastore adds ``path``, where the file lies on the server's disk; the info reaches
        clients (``/datastore/image/info``, every Next Sample answer), and that path is no client's business."""
        info = super().get_image_info(image_id)
        info.pop("path", None)
        return info

    # --- writes: each one transaction; files copied in atomically ---
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        default_id, ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or default_id
        name = self._filename(image_id, ext)
        logger.info(f"Adding Image: {image_id} => {image_filename}")
        with self.transaction():
            copy_atomically(image_filename, os.path.realpath(os.path.join(self._datastore.image_path(), name)))
            info = {**(image_info or {}), "ts": int(time.time()), "name": name}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file()
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        logger.info(f"Saving Label for Image: {image_id}; Tag: {label_tag}")
        with self.transaction():
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            _, ext = self._to_id(os.path.basename(label_filename))
            name = self._filename(image_id, ext)
            copy_atomically(label_filename, os.path.join(self._datastore.label_path(label_tag), name))
            info = {**(label_info or {}), "ts": int(time.time()), "name": name}
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file()
        return image_id

    def remove_image(self, image_id: str) -> None:
        with self.transaction():
            super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with self.transaction():
            super().remove_label(label_id, label_tag)

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        with self.transaction():
            super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        with self.transaction():
            super().update_label_info(label_id, label_tag, info)

    def set_name(self, name: str):
        with self.transaction():
            super().set_name(name)

    def set_description(self, description: str):
        with self.transaction():
            super().set_description(description)

    def _reconcile_datastore(self):
        with self.transaction():
            super()._reconcile_datastore()
