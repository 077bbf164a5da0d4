"""CORS with the origins the site allows (``--conf cors_origins``), never ``*``.

Stock MONAI Label allows every origin with credentials, so any web page a user opens could call
the server in their name. Here only the listed origins may (by default none besides the
server's own pages, which need no CORS); ``MONAI_LABEL_CORS_ORIGINS`` still counts when
``cors_origins`` is not given.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from monailabel.config import settings
from starlette.middleware import Middleware

from lib.conf import Conf, ConfError

ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


def allowed_origins(options: Conf) -> list[str]:
    default = [str(o).rstrip("/") for o in settings.MONAI_LABEL_CORS_ORIGINS]
    origins = [o.rstrip("/") for o in options.list("cors_origins", default)]
    bad = [o for o in origins if not ORIGIN.match(o)]
    if bad:
        raise ConfError(
            f"'cors_origins' must list origins such as https://viewer.hospital.org (scheme://host[:port]), "
            f"got {bad}; '*' is refused: any web page could act in a signed-in user's name"
        )
    return origins


def install(app: FastAPI, origins: list[str]) -> int:
    """Replaces MONAI Label's CORS middleware; returns its place in the middleware list."""
    ours = Middleware(
        CORSMiddleware, allow_origins=origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
    stock = [i for i, m in enumerate(app.user_middleware) if m.cls is CORSMiddleware]
    for i in reversed(stock):
        del app.user_middleware[i]
    place = stock[0] if stock else 0
    app.user_middleware.insert(place, ours)
    app.middleware_stack = None  # rebuilt on the next request
    return place
