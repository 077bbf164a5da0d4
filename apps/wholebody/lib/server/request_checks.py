"""What a client sends to any endpoint, checked before the endpoint runs.

Stock MONAI Label parses a request's ``params`` (a JSON form field or body) and uses what it finds:
an array instead of an object, a structure nested a thousand levels (``copy.deepcopy`` of the request
overflows Python's stack), a ``client_id`` of a megabyte or with control characters (it is logged and
becomes a key of the hand-outs), a session id that is a path (``..``). Each gets a 4xx naming it here.

For every endpoint, by the names of its parameters: a path parameter that names a model, an active
learning strategy or a scoring method, and a datastore endpoint's ``image``, ``label`` or ``id``
(404 unless the app has one of that name; stock MONAI Label answered 500 for an unknown strategy or
model file, 200 and empty info for an unknown study); the image of an endpoint that takes one as
``image``, ``file`` or ``session_id`` (422 when none is given; stock: 500); ``params`` and ``info``
(400 when not JSON, 422 when not an object, nested deeper than ``MAX_DEPTH``, or with a bad
``client_id``) and ``session_id`` (400 unless MONAI Label's own form, a UUID; 404 for a session the
server does not have, 409 where sessions are off). For ``/infer``: an
uploaded ``label`` file (no model here reads one) and ``output=dicom_seg`` where the datastore cannot
write it are refused before the request waits for a worker. For
``PUT /session/``: uploads get names the server chooses (the client's file name is a path on the
server's disk in stock MONAI Label); what a session may hold is ``lib.datastore.sessions``'s rule.
For ``PUT /datastore/image`` without an ``image`` id: the id is the file's name without its extension.
For ``PUT /model/{model}``: 409 for a model without a model file (stock: 500). For image info
(``PUT /datastore/image/info``, an upload's params): a ``strategy`` record that is not the hand-out
record's shape (422).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from fastapi import HTTPException
from monailabel.endpoints import datastore, infer, model, session
from monailabel.interfaces.utils.app import app_instance

from lib.conf import ConfError
from lib.server.errors import NotAvailableError, NotFoundError, check_id, check_session_id, shown
from lib.server.uploads import client_suffix, image_id_of

MAX_DEPTH = 10
MAX_CLIENT_ID = 256
PARAMS_FIELDS = ("params", "info")
# Parameters (of the path) that name something of the app: what it is, and the names it has.
NAMED = {
    "model": ("model", lambda app: [*app._infers, *(n for n in app._trainers if n not in app._infers)]),
    "strategy": ("active learning strategy", lambda app: list(app._strategies)),
    "method": ("scoring method", lambda app: list(app._scoring_methods)),
}
# The datastore's endpoints name a study by these, as text (an upload names a new one).
STUDY_PARAMETERS = ("image", "label", "id")
# An endpoint with all of these parameters needs one of them: the image to work on.
IMAGE_INPUTS = ("image", "file", "session_id")


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
    if kwargs.get("label") is not None:
        raise ConfError("no model here takes an uploaded 'label' file: send the image ('file', 'image' or 'session_id')")
    if kwargs.get("output") == infer.ResultType.dicom_seg:
        from monailabel.datastore.dicom import DICOMWebDatastore
        from monailabel.interfaces.utils.app import app_instance

        if not isinstance(app_instance().datastore(), DICOMWebDatastore):
            raise ConfError("output 'dicom_seg' needs a DICOMweb datastore (--studies http(s)://.../dicom-web)")
        if (parsed_params(kwargs.get("params")) or {}).get("label_info") is None:
            raise ConfError("output 'dicom_seg' needs 'label_info' in the params")


def check_names(kwargs: dict) -> None:
    """404 for a parameter naming a model, strategy or scoring method the app does not have."""
    app = None
    for parameter, (what, names_of) in NAMED.items():
        name = kwargs.get(parameter)
        if name is None:
            continue
        app = app or app_instance()
        names = names_of(app)
        if name not in names:
            raise NotFoundError(f"unknown {what} {shown(name)}; available: {', '.join(names) or 'none on this server'}")


def check_study(endpoint: Callable, kwargs: dict) -> None:
    """404 for a datastore endpoint naming a study the datastore does not have (stock answered some with
    200 and empty info)."""
    if endpoint.__module__ != datastore.__name__ or endpoint is datastore.api_add_image:
        return
    for parameter in STUDY_PARAMETERS:
        image = kwargs.get(parameter)
        if isinstance(image, str) and image:  # (``label`` of PUT /datastore/label is the uploaded file)
            check_id(image, "image id")
            if image not in app_instance().datastore().list_images():
                raise NotFoundError(f"image {shown(image)} not found in the datastore")


def check_session_known(session_id) -> None:
    """404 for a well-formed session id the server does not have (stock /infer went on without an image)."""
    if not session_id:
        return
    sessions = app_instance().sessions()
    if sessions is None:
        raise NotAvailableError("sessions are off on this server (MONAI_LABEL_SESSIONS): send 'image' or 'file' instead")
    if not sessions.get_session(session_id, update_ts=False):
        raise NotFoundError(f"unknown session {shown(session_id)}: it expired, was deleted or is another user's; make one with PUT /session/")


def check_image_given(kwargs: dict) -> None:
    if all(p in kwargs for p in IMAGE_INPUTS) and not any(kwargs[p] for p in IMAGE_INPUTS):
        raise ConfError(
            "no image given: send 'image' (a datastore image id, in the query), 'file' (an image upload) "
            "or 'session_id' (of PUT /session/)"
        )


def check_hand_out_record(info: dict | None) -> None:
    """Image info ``strategy`` is the record of active learning hand-outs that MONAI Label updates after each
    one (``{strategy: {"ts": ..., "client_id": ...}}``): in another shape, every later hand-out of the study
    failed (500). Clients write image info with ``PUT /datastore/image/info`` and an upload's params."""
    record = (info or {}).get("strategy")
    if record is not None and not (isinstance(record, dict) and all(isinstance(v, dict) for v in record.values())):
        raise ConfError(
            "'strategy' in image info is the record of active learning hand-outs: an object "
            f"{{strategy name: {{\"ts\": ..., \"client_id\": ...}}}}, got {shown(record)}"
        )


def _model_file(kwargs: dict) -> None:
    if not app_instance().model_file(kwargs["model"], validate=False):
        raise NotAvailableError(f"model '{kwargs['model']}' has no model file on this server to replace")


def _add_image(kwargs: dict) -> None:
    """The params become the image's info. Without an ``image`` id the upload's file name gives it; stock
    MONAI Label cut it at the first dot (``1.2.826.0.1.3680043.8.498.7.nii.gz`` became image ``1``)."""
    check_hand_out_record(parsed_params(kwargs.get("params")))
    upload = kwargs.get("file")
    if not kwargs.get("image") and upload is not None and upload.filename:
        kwargs["image"] = image_id_of(upload.filename)


def _image_info(kwargs: dict) -> None:
    check_hand_out_record(parsed_params(kwargs.get("info"), "info"))


def _session(kwargs: dict) -> None:
    for number, upload in enumerate(kwargs.get("files") or ()):
        upload.filename = f"upload{number}{client_suffix(upload.filename)}"


ENDPOINT_CHECKS: dict[Callable, Callable[[dict], None]] = {
    infer.api_run_inference: _infer,
    session.api_create_session: _session,
    datastore.api_add_image: _add_image,
    datastore.api_put_image_info: _image_info,
    model.api_update_model: _model_file,
}


def check_request(endpoint: Callable, kwargs: dict) -> None:
    """Raises a 4xx for what ``endpoint`` must not be given; may rename uploads (sessions)."""
    check_names(kwargs)
    check_study(endpoint, kwargs)
    check_image_given(kwargs)
    for field in PARAMS_FIELDS:
        if field in kwargs:
            parsed_params(kwargs[field], field)
    check_session_id(kwargs.get("session_id"))
    check_session_known(kwargs.get("session_id"))
    specific = ENDPOINT_CHECKS.get(endpoint)
    if specific:
        specific(kwargs)
