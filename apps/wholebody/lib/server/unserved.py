"""Stock routes this server, as started, cannot serve: answered 409 naming what to configure.

Stock MONAI Label serves every route whatever the server was started with, and answers with a 500
where a part is missing: the DICOMweb proxy without a PACS (it sends the studies folder's path to
``requests``), ``/logs/gpu`` without ``nvidia-smi``, whole-slide inference on a CT app, and
``POST /reload``, which unloads the app's modules under the running server (every check installed
at start then misses its exception types, and answers 500). Each is decided here, at start, in one
table; the route put in front keeps the stock endpoint's parameters and role.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from typing import Callable, Optional

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from monailabel.config import settings

from lib.server.errors import NotAvailableError

logger = logging.getLogger(__name__)

NO_PACS = "this server has no PACS: start it with --studies http(s)://.../dicom-web (docs/hospital-setup.md) for OHIF's DICOMweb proxy"
NO_GPU = "this server has no NVIDIA GPU (nvidia-smi not found)"
NO_WSI = "this server has no whole-slide (pathology) models: its models segment CT volumes, with POST /infer/{model}"
NO_RELOAD = "reloading the app's code in a running server is not supported here: restart the server to load new code"


def _has_pacs(app) -> bool:
    from monailabel.datastore.dicom import DICOMWebDatastore

    return isinstance(app.datastore(), DICOMWebDatastore)


# path prefix -> why the server cannot serve it (None: it can), decided from the app at start.
UNSERVED: dict[str, Callable[[object], Optional[str]]] = {
    "/proxy/dicom/": lambda app: None if _has_pacs(app) else NO_PACS,
    "/logs/gpu": lambda app: None if shutil.which("nvidia-smi") else NO_GPU,
    "/infer/wsi": lambda app: NO_WSI,
    "/reload": lambda app: NO_RELOAD,
}


def _refusing(path: str, methods, endpoint, reason: str) -> APIRoute:
    """A route at ``path`` with ``endpoint``'s parameters (its role check included), answered 409 with ``reason``."""

    def refuse(**_):
        raise NotAvailableError(reason)

    refuse.__signature__ = inspect.signature(endpoint, eval_str=True)
    refuse.__name__ = endpoint.__name__
    return APIRoute(path, refuse, methods=methods, include_in_schema=False)


def install(app: FastAPI, instance) -> None:
    """In front of every route (the request layer's included): the refusals for what ``instance`` lacks."""
    reasons = {prefix: why(instance) for prefix, why in UNSERVED.items()}
    front = {}
    for route in iter_route_contexts(app.router.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        for prefix, reason in reasons.items():
            if reason and route.path.removeprefix(settings.MONAI_LABEL_API_STR).startswith(prefix):
                # The request layer's copy of a stock route has its path and methods: one refusal for both.
                key = (route.path, frozenset(route.methods))
                front.setdefault(key, _refusing(route.path, route.methods, route.original_route.endpoint, reason))
    app.router.routes[0:0] = list(front.values())
    for prefix, reason in reasons.items():
        if reason:
            logger.info(f"Not served (409): {prefix}: {reason}")
