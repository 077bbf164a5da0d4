"""Request bodies over a limit are refused with 413 while they stream in, not after the server took them.

MONAI Label's endpoints take ``UploadFile``: Starlette spools the multipart body to a temporary file as
it parses it, before any endpoint runs, and has no limit. Here the declared ``Content-Length`` is
checked before a byte is read, and the bytes read are counted as the parser pulls them, so a chunked
upload that does not declare its size stops at the limit too.

Two limits: uploads (``multipart/form-data``, ``application/octet-stream``: images, labels, sessions;
``multipart/related``: DICOM instances a viewer stores through the PACS proxy with STOW-RS) may be
``max_upload_mb``; any other body (JSON or form params) ``MAX_PARAMS_BYTES``.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_PARAMS_BYTES = 1024 * 1024
UPLOAD_TYPES = ("multipart/form-data", "application/octet-stream", "multipart/related")


class BodyLimit:
    """Pure ASGI middleware: 413 naming the limit when a body declares or sends more than it may."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int):
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    def _limit(self, headers: Headers) -> tuple[int, str]:
        if headers.get("content-type", "").split(";")[0].strip().lower() in UPLOAD_TYPES:
            return self.max_upload_bytes, f"uploads may be at most {_mb(self.max_upload_bytes)} (--conf max_upload_mb)"
        return MAX_PARAMS_BYTES, f"request parameters may be at most {_mb(MAX_PARAMS_BYTES)}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        limit, rule = self._limit(headers)
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": f"request body of {int(declared):,} bytes refused: {rule}"}, status_code=413)
            return await response(scope, receive, send)

        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException raised while it reads the body on to its handler.
                    raise HTTPException(413, f"request body refused after {received:,} bytes: {rule}")
            return message

        await self.app(scope, counted, send)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def install(app: FastAPI, max_upload_bytes: int) -> None:
    # Inside the access check (installed later, further out): a request without a valid token is
    # refused before its body is looked at.
    app.user_middleware.append(Middleware(BodyLimit, max_upload_bytes=max_upload_bytes))
    app.middleware_stack = None
