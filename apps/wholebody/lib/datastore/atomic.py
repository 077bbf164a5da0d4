"""Writes that no reader and no crash ever sees half done, and a lock that threads and processes share.

A file is written under a temporary name in its own folder, flushed to the disk (fsync), renamed over
its target (``os.replace``, atomic on POSIX) and the folder is synced so that the rename itself is on
the disk: after ``kill -9`` (or a power cut) at any moment the target holds its old content or its new
one, never a mix. Temporary names start with '.' and end in '.tmp', so no datastore pattern
(``*.nii.gz``, ``*.pt``, ``*.json``) lists one that a crash left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
from typing import Any, BinaryIO, Callable


def _process_umask() -> int:
    """Read, not set: os.umask would change it for every thread for a moment."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0o022


# Files come out with the permissions a plain open() would give them, not mkstemp's 0600.
_UMASK = _process_umask()


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` fills a new file that then replaces ``path`` in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(folder)


def write_json_atomically(path: str, data: Any, **dump_options) -> None:
    text = json.dumps(data, **dump_options)
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def copy_atomically(source: str, path: str) -> None:
    def copy(f: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f, 1024 * 1024)

    write_atomically(path, copy)


class SharedLock:
    """One holder at a time among all threads of all processes that lock the same ``path`` (``flock``);
    re-entrant in the thread that holds it. The lock file is only a handle: it is never written."""

    def __init__(self, path: str):
        self.path = path
        self._threads = threading.RLock()
        self._owner: int | None = None
        self._depth = 0
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if not self._threads.acquire(blocking):
            return False
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                self._threads.release()
                return False
            self._fd, self._owner = fd, threading.get_ident()
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            fd, self._fd, self._owner = self._fd, None, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._threads.release()

    def held_here(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._owner == threading.get_ident()

    def __enter__(self) -> "SharedLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
