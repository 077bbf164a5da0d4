"""Who sent the request being answered, for the app: hand-outs and saved labels are keyed by the
signed-in user (every Slicer sends the same default ``client_id``), and a write that a request's
parameters ask for (``/infer`` with ``save_label``) is checked against the signed-in user's roles.
Set by the access check for each request; ``None`` where accounts are off. Threads started for a
request (FastAPI's thread pool, the inference queue) see it too: they run in a copy of the
request's context, which holds the same :class:`Requester`."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Optional

from fastapi import HTTPException

from lib.server.auth.roles import allows
from lib.server.auth.rules import Rule


@dataclass
class Requester:
    username: str
    roles: tuple[str, ...]
    # Audit events decided inside the endpoint (a write, or its refusal); the access check records them with
    # the answer's status.
    events: list[str] = field(default_factory=list)


_requester: ContextVar[Optional[Requester]] = ContextVar("wholebody_requester", default=None)


def signed_in_user() -> Optional[str]:
    requester = _requester.get()
    return requester.username if requester else None


def requester() -> Optional[Requester]:
    return _requester.get()


def set_requester(value: Optional[Requester]):
    """Returns the token to reset it with."""
    return _requester.set(value)


def reset_requester(token) -> None:
    _requester.reset(token)


def require_for_write(rule: Rule, what: str) -> None:
    """A write that a request's parameters ask for, on a route whose own rule is lower (``/infer`` is a
    user's, saving its result an annotator's: ``rules.PARAMETER_WRITES``): 403 unless the signed-in user
    has the rule's role. The access check audits the write, or its refusal, for this request. Without
    accounts nobody is signed in and nothing is checked here, as on every route."""
    current = _requester.get()
    if current is None:
        return
    if not allows(current.roles, rule.role):
        current.events.append("denied")
        raise HTTPException(status_code=403, detail=f'role "{rule.role}" is required to {what}; {current.username} has {", ".join(current.roles)}')
    if rule.audit:
        current.events.append(rule.audit)
