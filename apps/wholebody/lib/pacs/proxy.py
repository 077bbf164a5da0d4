"""MONAI Label's ``/proxy/dicom/...`` (what OHIF at ``/ohif/`` talks to), fixed for a real PACS.

The stock proxy drops the browser's ``Accept`` header on GET. OHIF asks for frames with
``transfer-syntax=*`` (it decodes JPEG 2000 itself); without the header Orthanc must transcode to
little endian, which it cannot do for JPEG 2000 without its GDCM plugin: every frame fails with
HTTP 500 and OHIF shows grey viewports. The stock proxy also runs blocking requests inside the
event loop, without a timeout, and answers an unreachable PACS with a 500 and a traceback.

Installed in front of the stock routes when the server runs on a DICOMweb datastore.
"""

from __future__ import annotations

import functools
import logging

import anyio
import requests
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

logger = logging.getLogger(__name__)

# Forwarded both ways; hop-by-hop headers and the length (recomputed) are not.
REQUEST_HEADERS = ("accept", "content-type", "range", "if-none-match", "if-modified-since")
DROPPED_RESPONSE_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
# Threads for requests to the PACS, apart from the pool every other endpoint runs in (40 threads): a slow
# or unreachable PACS holds these for up to its timeout, never the threads that answer saves or /info/.
PACS_THREADS = 16


def _upstream(op: str, path: str) -> str:
    server = settings.MONAI_LABEL_STUDIES.rstrip("/")
    prefix = {
        "wado": settings.MONAI_LABEL_WADO_PREFIX,
        "qido": settings.MONAI_LABEL_QIDO_PREFIX,
        "stow": settings.MONAI_LABEL_STOW_PREFIX,
    }.get(op)
    if path.endswith("metadata") and op == "qido":  # some OHIF versions ask QIDO for metadata
        prefix = settings.MONAI_LABEL_WADO_PREFIX
    return f"{server}/{prefix}/{path}" if prefix else f"{server}/{path}"


def _auth():
    user, password = settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
    return (user, password) if user and password else None


def forward(op: str, path: str, method: str, headers: dict, query: str, body: bytes | None) -> Response:
    url = _upstream(op, path) + (f"?{query}" if query else "")
    sent = {k: v for k, v in headers.items() if k.lower() in REQUEST_HEADERS}
    try:
        upstream = requests.request(
            method,
            url,
            headers=sent,
            data=body,
            auth=_auth(),
            timeout=(10, max(30.0, settings.MONAI_LABEL_DICOMWEB_PROXY_TIMEOUT)),
        )
    except (requests.ConnectionError, requests.Timeout) as e:
        raise HTTPException(
            status_code=503,
            detail=f"the PACS at {settings.MONAI_LABEL_STUDIES} is unreachable ({type(e).__name__}); check that it is running",
        ) from None
    if upstream.status_code >= 500:
        logger.warning(f"PACS answered {upstream.status_code} to {method} {path}: {upstream.text[:200]}")
    kept = {k: v for k, v in upstream.headers.items() if k.lower() not in DROPPED_RESPONSE_HEADERS}
    kept.pop("Content-Encoding", None)  # requests has decoded the body already
    return Response(content=upstream.content, status_code=upstream.status_code, headers=kept)


def install(app: FastAPI) -> None:
    """Puts the proxy routes in front of MONAI Label's own (first match wins)."""

    pacs_threads = anyio.CapacityLimiter(PACS_THREADS)

    def handler(op: str):
        async def proxy(request: Request, path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
            body = await request.body() if request.method == "POST" else None
            # The blocking request runs in a thread of its own pool: the event loop and the other endpoints stay free.
            call = functools.partial(forward, op, path, request.method, dict(request.headers), request.url.query, body)
            return await anyio.to_thread.run_sync(call, limiter=pacs_threads)

        return proxy

    routes = [
        APIRoute(f"/proxy/dicom/{op}/{{path:path}}" if op else "/proxy/dicom/{path:path}", handler(op),
                 methods=["GET", "POST"], include_in_schema=False)
        for op in ("wado", "qido", "stow", "")
    ]
    if getattr(app.state, "wholebody_dicomweb_proxy", False):
        return
    app.router.routes[0:0] = routes
    app.state.wholebody_dicomweb_proxy = True
    logger.info("DICOMweb proxy for OHIF: forwards Accept (transfer-syntax=*), 503 when the PACS is down")
