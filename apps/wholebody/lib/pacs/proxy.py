"""MONAI Label's ``/proxy/dicom/...`` (what OHIF at ``/ohif/`` talks to), fixed for a real PACS.

The stock proxy pastes the request's path onto the PACS URL with the server's own PACS credentials:
``/proxy/dicom/..%2F..%2Fpatients`` (or ``%2e%2e``, or encoded twice) leaves the DICOMweb root and
reaches the rest of the PACS (Orthanc's REST API: every patient, the configuration, ``tools/shutdown``,
``tools/execute-script``), since ``requests`` resolves the dot segments. Here only DICOMweb is forwarded:
the path is decoded until it no longer changes, refused (400) if any segment is made of dots or if it does
not start at a DICOMweb resource (``studies``, ``series``, ``instances``), and sent re-encoded under the
configured root; each operation has its method (GET for QIDO-RS and WADO-RS, POST for STOW-RS only). OHIF 3.10
stores with its WADO-RS client (``POST /proxy/dicom/wado/studies``: its data source has no STOW root), so a POST
there is STOW-RS too, on the STOW resources only (``studies``, ``studies/{study}``).

The stock proxy also drops the browser's ``Accept`` header on GET. OHIF asks for frames with
``transfer-syntax=*`` (it decodes JPEG 2000 itself); without the header Orthanc must transcode to
little endian, which it cannot do for JPEG 2000 without its GDCM plugin: every frame fails with
HTTP 500 and OHIF shows grey viewports. And it runs blocking requests inside the event loop, without a
timeout, and answers an unreachable PACS with a 500 and a traceback.

A SEG stored through the proxy (OHIF's "store segmentation") is handed to ``on_stored`` with the signed-in
user, after the PACS has answered: the server imports it as the study's label (lib/pacs/seg_import.py).

Installed in front of the stock routes when the server runs on a DICOMweb datastore.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import re
import threading
from typing import Callable, Optional
from urllib.parse import quote, unquote, urlsplit

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

# The resources of the DICOMweb standard (QIDO-RS, WADO-RS, STOW-RS) a viewer needs; everything else under a
# PACS's DICOMweb root (Orthanc's ``servers/`` forwards to other PACSs) or beside it is not the viewer's.
DICOMWEB_RESOURCES = ("studies", "series", "instances")
# GET reads (QIDO-RS, WADO-RS); POST stores (STOW-RS), an annotator's right (lib/server/auth/rules.py).
METHODS = {"qido": ("GET",), "wado": ("GET", "POST"), "stow": ("POST",), "": ("GET",)}
# What STOW-RS POSTs to: ``studies`` or ``studies/{study}``.
STOW_PATH = re.compile(r"studies(/[0-9.]+)?")
# A path decoded this often and still changing was built to slip past a check.
MAX_DECODINGS = 3
# RFC 3986 pchar less '%': what a path segment may hold unencoded.
SEGMENT_SAFE = "-._~!$&'()*+,;=:@"


class ProxyPathError(ValueError):
    """A path the proxy does not forward; the message says why."""


def dicomweb_path(path: str) -> str:
    """``path`` (below ``/proxy/dicom/{op}/``, as the router decoded it once) checked and re-encoded, so the
    PACS reads exactly the segments checked here."""
    decoded = path
    for _ in range(MAX_DECODINGS):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        if unquote(decoded) != decoded:
            raise ProxyPathError(f"the path is percent-encoded more than {MAX_DECODINGS} times")
    if "\\" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise ProxyPathError("the path holds a backslash or a control character")
    segments = decoded.split("/")
    # '..;x' is '..' to servers that take ';' as a segment parameter.
    if any(s.split(";")[0].strip(".") == "" and s != "" for s in segments):
        raise ProxyPathError("a path segment is '.' or '..' (or only dots): the proxy stays inside the PACS's DICOMweb root")
    if "" in segments:
        raise ProxyPathError("the path has an empty segment ('//', or a leading or trailing '/')")
    if segments[0] not in DICOMWEB_RESOURCES:
        raise ProxyPathError(f"only DICOMweb resources are forwarded ({', '.join(DICOMWEB_RESOURCES)}), not {segments[0][:64]!r}")
    return "/".join(quote(s, safe=SEGMENT_SAFE) for s in segments)


def _root(op: str, path: str) -> str:
    server = settings.MONAI_LABEL_STUDIES.rstrip("/")
    prefix = {
        "wado": settings.MONAI_LABEL_WADO_PREFIX,
        "qido": settings.MONAI_LABEL_QIDO_PREFIX,
        "stow": settings.MONAI_LABEL_STOW_PREFIX,
    }.get(op)
    if path.endswith("metadata") and op == "qido":  # some OHIF versions ask QIDO for metadata
        prefix = settings.MONAI_LABEL_WADO_PREFIX
    return f"{server}/{prefix.strip('/')}" if prefix else server


def upstream_url(op: str, path: str) -> str:
    """The PACS URL for ``/proxy/dicom/{op}/{path}``; raises ProxyPathError for anything outside the root."""
    root = _root(op, path)
    url = f"{root}/{dicomweb_path(path)}"
    # Checked again on the URL as the PACS will see it: under the root once dot segments are resolved.
    root_path, url_path = urlsplit(root).path.rstrip("/"), urlsplit(url).path
    if posixpath.normpath(url_path) != url_path or not url_path.startswith(root_path + "/"):
        raise ProxyPathError("the path leaves the PACS's DICOMweb root")
    return url


def _auth():
    user, password = settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
    return (user, password) if user and password else None


def _google_bearer() -> dict:
    """Google Cloud Healthcare: the machine's Google credentials, as the stock proxy sends them."""
    import google.auth
    import google.auth.transport.requests

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(google.auth.transport.requests.Request())
    return {"Authorization": f"Bearer {credentials.token}"}


def forward(op: str, path: str, method: str, headers: dict, query: str, body: bytes | None) -> Response:
    if method not in METHODS[op]:
        raise HTTPException(
            status_code=405,
            detail=f"{method} is not forwarded to {'/proxy/dicom/' + op if op else '/proxy/dicom'}: "
            f"{', '.join(METHODS[op])} only (QIDO-RS and WADO-RS read with GET, STOW-RS stores with POST at /proxy/dicom/stow)",
            headers={"Allow": ", ".join(METHODS[op])},
        )
    if method == "POST":
        if not STOW_PATH.fullmatch(path):
            detail = "STOW-RS (POST) stores to studies or studies/{StudyInstanceUID} only"
            if op == "wado":
                raise HTTPException(status_code=405, detail=detail, headers={"Allow": "GET"})
            raise HTTPException(status_code=400, detail=f"not forwarded to the PACS: {detail}")
        op = "stow"
    try:
        url = upstream_url(op, path) + (f"?{query}" if query else "")
    except ProxyPathError as e:
        raise HTTPException(status_code=400, detail=f"not forwarded to the PACS: {e}") from None
    sent = {k: v for k, v in headers.items() if k.lower() in REQUEST_HEADERS}
    auth = _auth()
    if "googleapis.com" in settings.MONAI_LABEL_STUDIES:
        sent.update(_google_bearer())
        auth = None
    try:
        upstream = requests.request(
            method,
            url,
            headers=sent,
            data=body,
            auth=auth,
            timeout=(10, max(30.0, settings.MONAI_LABEL_DICOMWEB_PROXY_TIMEOUT)),
            allow_redirects=False,  # a redirect would be followed with the PACS credentials, wherever it points
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


def install(app: FastAPI, on_stored: Optional[Callable[[list[str], Optional[str]], None]] = None) -> None:
    """Puts the proxy routes in front of MONAI Label's own (first match wins). Each takes GET and POST, as the
    stock routes behind it do, so that a method refused here is refused here, never answered by the stock proxy.
    ``on_stored(seg series, user)`` runs in a thread of its own after a STOW-RS that stored SEGs."""
    from lib.pacs.stored_segs import stored_seg_series
    from lib.server.auth.context import signed_in_user

    pacs_threads = anyio.CapacityLimiter(PACS_THREADS)

    def handler(op: str):
        async def proxy(request: Request, path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
            body = await request.body() if request.method == "POST" else None
            # The blocking request runs in a thread of its own pool: the event loop and the other endpoints stay free.
            call = functools.partial(forward, op, path, request.method, dict(request.headers), request.url.query, body)
            answer = await anyio.to_thread.run_sync(call, limiter=pacs_threads)
            if request.method == "POST" and on_stored and answer.status_code in (200, 202):
                segs = stored_seg_series(answer.body)
                if segs:  # the PACS has it: the import must not hold the viewer's answer
                    threading.Thread(target=on_stored, args=(segs, signed_in_user()), name="seg-import", daemon=True).start()
            return answer

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
    logger.info("DICOMweb proxy for OHIF: DICOMweb resources only, forwards Accept (transfer-syntax=*), 503 when the PACS is down")
