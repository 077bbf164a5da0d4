"""Uploads live in a private folder of the server, are deleted when their request is answered, and a
path is trusted as an image only by the request the server created it for.

Stock MONAI Label writes each upload (``/infer``, ``/session``, ``PUT /datastore/image`` and
``/label``, ``PUT /model``) to the system temp folder and removes it only when the request succeeds:
every refused upload stayed there, readable by other local users, and the app trusted any temp file
as "written by the server", so one client could name another's leftover upload as its image.

Here:

* the server's temp folder (``tempfile.tempdir``, and ``TMPDIR`` for the task processes it starts) is
  its own folder, mode 0700, under ``--conf upload_dir`` (default ``<model_dir>/uploads``), emptied at
  start. Starlette's spooled request bodies and MONAI Label's result files go there too;
* each request gets a folder of its own inside it (:class:`RequestFiles`, an ASGI middleware), removed
  with everything in it once the answer is sent, whatever the answer;
* MONAI Label's endpoints pick their upload paths with ``tempfile.NamedTemporaryFile(...).name``: in
  those modules ``tempfile`` is :data:`REQUEST_TEMPFILE`, which hands out paths in the request's
  folder and records them; :func:`created_for_this_request` is the app's test of an image path.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import types
from contextvars import ContextVar
from typing import Iterable

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from lib.datastore.image_check import extension

logger = logging.getLogger(__name__)

# Stock endpoint modules that write uploads with ``tempfile.NamedTemporaryFile(suffix=...).name``.
UPLOAD_MODULES = (
    "monailabel.endpoints.datastore",
    "monailabel.endpoints.infer",
    "monailabel.endpoints.model",
    "monailabel.endpoints.session",
    "monailabel.endpoints.wsi_infer",
)
PROCESS_PREFIX = "server-"


class _Request:
    """The files of one request: its folder (made on first use) and the paths handed out in it."""

    def __init__(self, parent: str):
        self.parent = parent
        self.folder: str | None = None
        self.paths: set[str] = set()

    def new_path(self, suffix: str) -> str:
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="request-", dir=self.parent)  # mode 0700
        path = os.path.join(self.folder, f"upload{len(self.paths)}{client_suffix(suffix)}")
        self.paths.add(path)
        return path

    def remove(self) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


_current: ContextVar[_Request | None] = ContextVar("wholebody_request_files", default=None)


def client_suffix(name: str | None) -> str:
    """The extension of a client's file name (readers pick the format by it): a known format at its end,
    whatever dots come before (``/home/me/1.2.826.0.1.3680043.8.498.7.nii.gz`` -> ``.nii.gz``: PACS exports
    and anonymisers name files by their Series Instance UID), else its last part (``notes.txt`` -> ``.txt``);
    ``.upload`` for anything that could leave the folder. Also what stock MONAI Label passes as a suffix
    (all of a name's extensions: ``.2.826.0.1.3680043.8.498.7.nii.gz``)."""
    text = extension(f"upload{os.path.basename(str(name or ''))}")
    return text if len(text) <= 32 and all(c.isalnum() or c == "." for c in text) and ".." not in text else ".upload"


def image_id_of(name: str) -> str:
    """The image id a client's file name gives: its name without the extension (``1.2.826...7.nii.gz`` ->
    ``1.2.826...7``), as the datastore names the studies of its folder."""
    name = os.path.basename(name)
    suffix = client_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


class _NamedPath:
    """What stock code uses of ``tempfile.NamedTemporaryFile(...)``: its ``.name``."""

    def __init__(self, name: str):
        self.name = name


def _named_temporary_file(suffix: str | None = None, **_ignored) -> _NamedPath:
    current = _current.get()
    if current is None:  # outside a request (not reached by the stock endpoints): the private temp folder
        fd, name = tempfile.mkstemp(suffix=client_suffix(suffix))
        os.close(fd)
        return _NamedPath(name)
    return _NamedPath(current.new_path(suffix or ""))


def _temporary_directory(**_ignored) -> _NamedPath:
    current = _current.get()
    return _NamedPath(current.new_path(".dir") if current else tempfile.mkdtemp())


REQUEST_TEMPFILE = types.SimpleNamespace(
    NamedTemporaryFile=_named_temporary_file,
    TemporaryDirectory=_temporary_directory,
    gettempdir=tempfile.gettempdir,
)


def created_for_this_request(path: object) -> bool:
    """Whether ``path`` is a file the server created for the request being answered (an upload)."""
    current = _current.get()
    return isinstance(path, str) and current is not None and os.path.abspath(path) in current.paths


class RequestFiles:
    """Pure ASGI middleware: each HTTP request's uploads in a folder of its own, removed after the answer."""

    def __init__(self, app: ASGIApp, parent: str):
        self.app = app
        self.parent = parent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = _Request(self.parent)
        token = _current.set(request)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)
            request.remove()


def private_folder(upload_dir: str) -> str:
    """This process's temp folder under ``upload_dir`` (both mode 0700); folders of servers that are gone
    are removed."""
    os.makedirs(upload_dir, mode=0o700, exist_ok=True)
    os.chmod(upload_dir, 0o700)
    for name in os.listdir(upload_dir):
        pid = name[len(PROCESS_PREFIX) :].split("-")[0]
        if name.startswith(PROCESS_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(upload_dir, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{PROCESS_PREFIX}{os.getpid()}-", dir=upload_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def install(app: FastAPI, upload_dir: str, modules: Iterable[str] = UPLOAD_MODULES) -> str:
    """Makes the private temp folder the process's, points the stock endpoints' uploads into each
    request's folder, and adds the middleware. Returns the folder."""
    folder = private_folder(upload_dir)
    tempfile.tempdir = folder
    os.environ["TMPDIR"] = folder  # task processes (training, scoring) started from here
    for name in modules:
        importlib.import_module(name).tempfile = REQUEST_TEMPFILE
    app.user_middleware.append(Middleware(RequestFiles, parent=folder))
    app.middleware_stack = None
    logger.info(f"Uploads and temporary files in {folder} (private to the server; a request's uploads go when it is answered)")
    return folder
