"""Turns bad requests into 4xx answers that name the problem.

Stock MONAI Label answers an unknown model, an unknown image or malformed params JSON with
HTTP 500. Its FastAPI app is created before ours is loaded, so handlers are attached at init
and the middleware stack is rebuilt on the next request.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

from lib.conf import ConfError
from lib.transforms.validate import InvalidImageError

logger = logging.getLogger(__name__)

# Ids become file names in the datastore: no separators, no leading dot, nothing to escape.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Session ids name folders of the session store: MONAI Label makes them with uuid1.
SESSION_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class NotFoundError(LookupError):
    """An unknown model, image, label or strategy."""


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


async def _monailabel(request: Request, exc: MONAILabelException):
    status = 400 if exc.error == MONAILabelError.INVALID_INPUT else 500
    if status == 500:
        logger.error(f"{request.url.path}: {exc.msg}")
    return _answer(status, exc.msg)


def install(app: FastAPI) -> None:
    app.add_exception_handler(json.JSONDecodeError, _bad_json)
    app.add_exception_handler(ConfError, _invalid)
    app.add_exception_handler(InvalidImageError, _invalid)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(ImageNotFoundException, _not_found)
    app.add_exception_handler(LabelNotFoundException, _not_found)
    app.add_exception_handler(MONAILabelException, _monailabel)
    app.middleware_stack = None
