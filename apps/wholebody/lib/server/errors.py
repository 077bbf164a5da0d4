"""Turns bad requests into 4xx answers that name the problem, for every route at once.

Stock MONAI Label answers an unknown model, an unknown image or malformed params JSON with
HTTP 500. Here each kind of mistake is an exception type with its status, decided once:
:class:`NotFoundError` 404 (an unknown model, strategy, scoring method, image...),
:class:`NotAvailableError` 409 (a part the server was not started with, or nothing there yet; the
message says what to configure), ``ConfError`` and ``InvalidImageError`` 422 (a bad or missing input).

Anything else is a fault of the server: :class:`RequestIds` logs its traceback with a request id and
answers 500 ``{"detail": ..., "request_id": ...}``; every answer carries its id in ``X-Request-ID``.
Stock MONAI Label's own 500s (``HTTPException(500)``, ``MONAILabelException``) are answered and logged
the same way. Its FastAPI app is created before ours is loaded, so handlers are attached at init
and the middleware stack is rebuilt on the next request.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lib.conf import ConfError
from lib.transforms.validate import InvalidImageError

logger = logging.getLogger(__name__)

# Ids become file names in the datastore: no separators, no leading dot, nothing to escape.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Session ids name folders of the session store: MONAI Label makes them with uuid1.
SESSION_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


REQUEST_ID_HEADER = "X-Request-ID"
_SCOPE_KEY = "wholebody_request_id"


class NotFoundError(LookupError):
    """An unknown model, image, label or strategy."""


class NotAvailableError(RuntimeError):
    """What the request needs is not there: a part the server was not started with (a PACS, a GPU, a
    model file), or nothing yet (no labelled study to export). The message says what to configure."""


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value) or ".." in value:
        raise HTTPException(
            status_code=400,
            detail=f"invalid {what} {shown(value)}: use letters, digits, '.', '_' or '-' (no path separators or '..')",
        )
    return value


def check_session_id(value) -> None:
    """An empty value means no session."""
    if value not in (None, "") and not (isinstance(value, str) and SESSION_ID_PATTERN.match(value)):
        raise HTTPException(status_code=400, detail=f"invalid session id {shown(value)}: session ids are the UUIDs PUT /session/ answers")


def shown(value, limit: int = 80) -> str:
    """A client's value as an answer quotes it: repr, cut (an id may be a megabyte long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value)):,} characters)"


def _answer(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


async def _bad_json(request: Request, exc: json.JSONDecodeError):
    return _answer(400, f"request parameters are not valid JSON: {exc}")


async def _invalid(request: Request, exc: Exception):
    return _answer(422, str(exc))


async def _not_found(request: Request, exc: Exception):
    return _answer(404, str(exc) or "not found")


async def _not_available(request: Request, exc: Exception):
    return _answer(409, str(exc))


async def _monailabel(request: Request, exc: MONAILabelException):
    if exc.error == MONAILabelError.INVALID_INPUT:
        return _answer(400, exc.msg)
    return server_fault(request.scope, f"{request.method} {request.url.path}: {exc.msg}", exc)


async def _http(request: Request, exc: HTTPException):
    """Stock endpoints raise ``HTTPException(500)`` for their own faults: logged and answered with the request
    id. Any other status is an answer (a full inference queue's or an unreachable PACS's 503 included)."""
    if exc.status_code != 500:
        return await http_exception_handler(request, exc)
    return server_fault(request.scope, f"{request.method} {request.url.path}: {exc.detail}", exc)


def request_id(scope: Scope) -> str:
    """The id of the request being answered (made on first use)."""
    return scope.setdefault(_SCOPE_KEY, uuid.uuid4().hex[:16])


def server_fault(scope: Scope, what: str, exc: BaseException) -> JSONResponse:
    """A 500 for a fault of the server: logged with its traceback and the request id the answer carries."""
    rid = request_id(scope)
    logger.error(f"request {rid}: {what}", exc_info=(type(exc), exc, exc.__traceback__))
    return JSONResponse(
        status_code=500,
        content={"detail": f"internal server error (request id {rid}: the server's log has the details)", "request_id": rid},
    )


class RequestIds:
    """Pure ASGI middleware: an id per request in ``X-Request-ID``; an exception no handler answered is
    logged with it and answered 500 (the id in the body too), instead of a bare 'Internal Server Error'."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.lower().encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            what = f"{scope.get('method')} {scope.get('path')}: {type(exc).__name__}: {exc}"
            if started:  # the answer is under way: nothing else can be sent
                logger.error(f"request {rid}: {what} (after the answer started)", exc_info=exc)
                return
            await server_fault(scope, what, exc)(scope, receive, send_with_id)


def install(app: FastAPI) -> None:
    app.add_exception_handler(json.JSONDecodeError, _bad_json)
    app.add_exception_handler(ConfError, _invalid)
    app.add_exception_handler(InvalidImageError, _invalid)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(NotAvailableError, _not_available)
    app.add_exception_handler(ImageNotFoundException, _not_found)
    app.add_exception_handler(LabelNotFoundException, _not_found)
    app.add_exception_handler(MONAILabelException, _monailabel)
    app.add_exception_handler(HTTPException, _http)
    # Outermost: it also answers for faults of the other middleware (access check, body limit, uploads).
    app.user_middleware.insert(0, Middleware(RequestIds))
    app.middleware_stack = None
