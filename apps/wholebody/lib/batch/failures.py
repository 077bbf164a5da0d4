"""The one line a failed study is recorded with, in the server's batch answer and in a Ray run's manifest."""

from __future__ import annotations

from fastapi import HTTPException


def failure_reason(error: BaseException) -> str:
    """The 4xx/5xx detail the server would have answered for this study, else the exception that
    started it (MONAI's Compose wraps a transform's error as "applying transform ...")."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, HTTPException):
        return f"HTTP {root.status_code}: {root.detail}"
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0] if lines else 'no message'}"
