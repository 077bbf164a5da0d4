"""Who sent the request being answered, for the app: hand-outs and saved labels are keyed by the
signed-in user (every Slicer sends the same default ``client_id``). Set by the access check for
each request; ``None`` where accounts are off. Threads started for a request (FastAPI's thread
pool) see it too: they run in a copy of the request's context."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Optional

_username: ContextVar[Optional[str]] = ContextVar("wholebody_signed_in_user", default=None)


def signed_in_user() -> Optional[str]:
    return _username.get()


def set_signed_in_user(username: Optional[str]):
    """Returns the token to reset it with."""
    return _username.set(username)


def reset_signed_in_user(token) -> None:
    _username.reset(token)
