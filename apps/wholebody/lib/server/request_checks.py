"""What a client sends to any endpoint, checked before the endpoint runs.

Stock MONAI Label parses a request's ``params`` (a JSON form field or body) and uses what it finds:
an array instead of an object, a structure nested a thousand levels (``copy.deepcopy`` of the request
overflows Python's stack), a ``client_id`` of a megabyte or with control characters (it is logged and
becomes a key of the hand-outs), a session id that is a path (``..``). Each gets a 4xx naming it here.

For every endpoint: ``params`` and ``info`` (400 when not JSON, 422 when not an object, nested deeper
than ``MAX_DEPTH``, or with a bad ``client_id``) and ``session_id`` (400 unless MONAI Label's own form,
a UUID). For ``/infer``: an uploaded ``label`` file (no model here reads one) and ``output=dicom_seg``
where the datastore cannot write it are refused before the request waits for a worker. For
``PUT /session/``: uploads get names the server chooses (the client's file name is a path on the
server's disk in stock MONAI Label); what a session may hold is ``lib.datastore.sessions``'s rule.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from fastapi import HTTPException
from monailabel.endpoints import infer, session

from lib.conf import ConfError
from lib.server.errors import check_session_id, shown
from lib.server.uploads import client_suffix

MAX_DEPTH = 10
MAX_CLIENT_ID = 256
PARAMS_FIELDS = ("params", "info")


def depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parsed_params(value: Any, field: str = "params") -> dict | None:
    """``params`` as sent (JSON text of a form field, or a parsed body): the object, or a 4xx."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except RecursionError:
            raise HTTPException(400, f"'{field}' is nested too deeply to parse") from None
        except ValueError as e:
            raise HTTPException(400, f"'{field}' is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfError(f"'{field}' must be a JSON object, got {type(value).__name__}")
    if depth(value) > MAX_DEPTH:
        raise ConfError(f"'{field}' is nested more than {MAX_DEPTH} levels deep")
    check_client_id(value.get("client_id"))
    return value


def check_client_id(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLIENT_ID or not value.isprintable():
        raise ConfError(f"'client_id' must be 1 to {MAX_CLIENT_ID} printable characters, got {shown(value)}")


def _infer(kwargs: dict) -> None:
    session_id = kwargs.get("session_id")
    if session_id:
        from monailabel.interfaces.utils.app import app_instance

        sessions = app_instance().sessions()
        if sessions is None or sessions.get_session(session_id, update_ts=False) is None:
            raise HTTPException(404, f"session {shown(session_id)} not found (sessions are their creator's, and expire)")
    if kwargs.get("label") is not None:
        raise ConfError("no model here takes an uploaded 'label' file: send the image ('file', 'image' or 'session_id')")
    if kwargs.get("output") == infer.ResultType.dicom_seg:
        from monailabel.datastore.dicom import DICOMWebDatastore
        from monailabel.interfaces.utils.app import app_instance

        if not isinstance(app_instance().datastore(), DICOMWebDatastore):
            raise ConfError("output 'dicom_seg' needs a DICOMweb datastore (--studies http(s)://.../dicom-web)")
        if (parsed_params(kwargs.get("params")) or {}).get("label_info") is None:
            raise ConfError("output 'dicom_seg' needs 'label_info' in the params")


def _session(kwargs: dict) -> None:
    for number, upload in enumerate(kwargs.get("files") or ()):
        upload.filename = f"upload{number}{client_suffix(upload.filename)}"


ENDPOINT_CHECKS: dict[Callable, Callable[[dict], None]] = {
    infer.api_run_inference: _infer,
    session.api_create_session: _session,
}


def check_request(endpoint: Callable, kwargs: dict) -> None:
    """Raises a 4xx for what ``endpoint`` must not be given; may rename uploads (sessions)."""
    for field in PARAMS_FIELDS:
        if field in kwargs:
            parsed_params(kwargs[field], field)
    check_session_id(kwargs.get("session_id"))
    specific = ENDPOINT_CHECKS.get(endpoint)
    if specific:
        specific(kwargs)
