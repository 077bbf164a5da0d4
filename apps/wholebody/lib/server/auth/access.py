"""One check in front of every route: who is asking (bearer token or the browser's session
cookie), whether their role allows the route (``rules.py``), whether a browser request that
changes something comes from our own pages, and an audit line for what changes something.

A pure ASGI middleware: MONAI Label's own RBAC dependencies are fixed at import time by
``MONAI_LABEL_AUTH_ENABLE`` (Keycloak), so built-in accounts cannot rely on them. Where accounts
are off (loopback, ``--conf auth none``, or Keycloak doing the checking) it still refuses
foreign origins and writes the audit log.

Answers: no or bad token -> 401 with ``WWW-Authenticate: Bearer`` (a browser asking for a page
is sent to ``/login`` instead); a role too low -> 403; a state-changing request with a foreign
``Origin``, or one signed in by cookie without ``Origin`` or ``Referer`` -> 403.
"""

from __future__ import annotations

import logging
from typing import Optional
from urllib.parse import quote, urlsplit

from fastapi.responses import JSONResponse, RedirectResponse
from starlette._utils import get_route_path
from starlette.requests import Request

from lib.server.auth.audit import AuditLog
from lib.server.auth.context import Requester, reset_requester, set_requester
from lib.server.auth.revoked import RevokedTokens
from lib.server.auth.roles import allows
from lib.server.auth.rules import PUBLIC, SIGNED_IN, rule_for
from lib.server.auth.tokens import InvalidToken, Tokens
from lib.server.auth.users import Account, Accounts

logger = logging.getLogger(__name__)

SESSION_COOKIE = "monailabel_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_BODY_LIMIT = 16 * 1024  # a sign-in form; anonymous clients get no more buffered


class SignedIn:
    """Accounts, the tokens that prove who signed in, and those signed out before their expiry; None in
    AccessCheck where accounts are off."""

    def __init__(self, accounts: Accounts, tokens: Tokens, revoked: RevokedTokens):
        self.accounts = accounts
        self.tokens = tokens
        self.revoked = revoked

    def account(self, token: Optional[str]) -> Account:
        if not token:
            raise InvalidToken("not signed in: get a token from POST /auth/token (or sign in at /login in a browser)")
        claims = self.tokens.decode(token)
        if claims.token_id in self.revoked:
            raise InvalidToken("this token was signed out: sign in again")
        account = self.accounts.get(claims.username)
        if account is None or account.password_version != claims.password_version:
            raise InvalidToken("the account was removed or its password changed: sign in again")
        return account

    def sign_out(self, token: Optional[str]) -> Optional[str]:
        """Revokes a valid token; the user it was for, or None for no or an invalid token."""
        try:
            account = self.account(token)
        except InvalidToken:
            return None
        claims = self.tokens.decode(token)
        self.revoked.revoke(claims.token_id, claims.expires)
        return account.username


def credentials(request: Request) -> tuple[Optional[str], Optional[str]]:
    """(token, how it came): the ``Authorization: Bearer`` header, else the session cookie."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), "bearer"
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, "cookie") if cookie else (None, None)


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _origin_of(request: Request) -> Optional[str]:
    origin = request.headers.get("origin")
    if origin is None and request.headers.get("referer"):
        parts = urlsplit(request.headers["referer"])
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin


async def _buffered(receive, limit: int) -> Optional[bytes]:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


class AccessCheck:
    def __init__(self, app, signed_in: Optional[SignedIn], audit: AuditLog, origins: list[str]):
        self.app = app
        self.signed_in = signed_in
        self.audit = audit
        self.origins = set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        method, path = scope["method"], get_route_path(scope)
        template, rule = rule_for(method, path)
        address = request.client.host if request.client else None
        token, via = credentials(request) if self.signed_in else (None, None)

        refusal = self._foreign_origin(request, method, via)
        username, signed = None, None
        if refusal is None and self.signed_in and rule.role != PUBLIC:
            try:
                account = self.signed_in.account(token)
            except InvalidToken as e:
                return await self._not_signed_in(request, str(e), via)(scope, receive, send)
            username, signed = account.username, Requester(account.username, tuple(account.roles))
            if rule.role != SIGNED_IN and not allows(account.roles, rule.role):
                where = f"{method} {template}" if template else f"{method} {path[:200]} (a route with no access rule)"
                refusal = JSONResponse(
                    {"detail": f'role "{rule.role}" is required for {where}; {username} has {", ".join(account.roles)}'},
                    status_code=403,
                )
        if refusal is not None:
            self.audit.record("denied", username, address, method=method, path=path, status=refusal.status_code)
            return await refusal(scope, receive, send)

        if rule.role == PUBLIC and method not in SAFE_METHODS:
            body = await _buffered(receive, PUBLIC_BODY_LIMIT)
            if body is None:
                return await JSONResponse({"detail": f"request body over {PUBLIC_BODY_LIMIT} bytes"}, 413)(scope, receive, send)
            receive = _replay(body, receive)

        scope.setdefault("state", {})["user"] = username
        context = set_requester(signed)
        answered = {"status": 500, "recorded": 0}  # 500: no answer started, the request failed inside the app

        def record() -> None:
            events = ([rule.audit] if rule.audit else []) + (signed.events if signed else [])
            for event in events[answered["recorded"] :]:
                self.audit.record(event, username, address, method=method, path=path, query=dict(request.query_params), status=answered["status"])
            answered["recorded"] = len(events)

        async def send_recording(message):
            # Recorded before the answer leaves: a client that has its answer finds the line in the log.
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            reset_requester(context)
            record()  # what the app noted after its answer started, or everything if none started

    def _foreign_origin(self, request: Request, method: str, via: Optional[str]) -> Optional[JSONResponse]:
        """Cross-site request forgery: a browser request that changes something must come from our
        own pages or an allowed origin. The session cookie is SameSite=Strict already; this also
        covers another site on the same host (same site, other port) and older browsers."""
        if method in SAFE_METHODS:
            return None
        origin = _origin_of(request)
        if origin is None:
            if via != "cookie":
                return None  # not a browser (Slicer, scripts): nothing ambient to abuse
            return JSONResponse({"detail": "a signed-in browser request without Origin or Referer is refused"}, 403)
        if origin == own_origin(request) or origin in self.origins:
            return None
        return JSONResponse({"detail": f"requests from {origin[:200]} are not allowed (--conf cors_origins)"}, 403)

    @staticmethod
    def _not_signed_in(request: Request, reason: str, via: Optional[str]):
        if request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", ""):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            answer = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            error = ', error="invalid_token"' if via else ""
            answer = JSONResponse({"detail": reason}, status_code=401, headers={"WWW-Authenticate": f"Bearer{error}"})
        if via == "cookie":
            answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
