"""Signing in: MONAI Label's ``/auth`` contract (what the 3D Slicer module speaks) and a login
page that gives a browser (OHIF at ``/ohif/``) a session cookie.

- ``GET /auth/``: ``{"enabled": true, ...}``, so Slicer asks for a username and password;
- ``POST /auth/token``: OAuth2 password grant (form ``username``, ``password``), answers
  ``{"access_token": ..., "token_type": "bearer"}``;
- ``GET /auth/token/valid``: the signed-in user (401 when the token is not valid);
- ``GET /login``, ``POST /login``: the page and its form; on success the token goes into an
  HttpOnly, SameSite=Strict cookie (Secure on https) and the browser goes on to ``next``;
- ``GET`` or ``POST /logout``: the session's token (cookie, or ``Authorization: Bearer``) is revoked on
  the server (``revoked.py``) and the cookie cleared.
"""

from __future__ import annotations

import asyncio
import html
import math
import re
from pathlib import Path
from string import Template
from typing import Optional

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import OAuth2PasswordRequestForm
from monailabel.config import settings
from monailabel.endpoints.user.auth import Token, User
from starlette.concurrency import run_in_threadpool

from lib.server.auth.access import SESSION_COOKIE, SignedIn, credentials
from lib.server.auth.audit import AuditLog
from lib.server.auth.roles import granted
from lib.server.auth.throttle import LoginThrottle
from lib.server.auth.users import Account

PAGE = Template((Path(__file__).parent / "login_page.html").read_text())
DEFAULT_NEXT = "/ohif/"
# Where the page may send the browser on: a path of this server, not another site (//evil, /\evil).
LOCAL_PATH = re.compile(r"^/(?![/\\])[\x21-\x7e]*$")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class SignInRefused(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def install(app: FastAPI, signed_in: SignedIn, throttle: LoginThrottle, audit: AuditLog) -> None:
    router = APIRouter(tags=["Auth"])

    async def sign_in(request: Request, username: str, password: str) -> Account:
        address = request.client.host if request.client else None
        retry_after, delay = throttle.begin(username, address)
        if retry_after:
            audit.record("login_refused", username, address)
            raise SignInRefused(
                429,
                f"too many failed sign-ins for this user or from this address: try again in {math.ceil(retry_after)} s",
                {"Retry-After": str(math.ceil(retry_after))},
            )
        account = await run_in_threadpool(signed_in.accounts.verify, username, password)  # bcrypt: slow, off the loop
        if account is None:
            audit.record("login_failed", username, address)
            await asyncio.sleep(delay)
            raise SignInRefused(401, "wrong username or password", {"WWW-Authenticate": "Bearer"})
        throttle.succeeded(username, address)
        audit.record("login", account.username, address)
        return account

    @router.get("/auth/", summary="Check If Auth is Enabled")
    async def auth_enabled():
        return {"enabled": True, "client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "realm": None, "accounts": "built-in"}

    @router.post("/auth/token", response_model=Token, summary="Fetch new access code/token")
    async def access_token(request: Request, form: OAuth2PasswordRequestForm = Depends()):
        try:
            account = await sign_in(request, form.username, form.password)
        except SignInRefused as e:
            raise HTTPException(status_code=e.status, detail=e.message, headers=e.headers) from None
        return {"access_token": signed_in.tokens.issue(account), "token_type": "bearer"}

    @router.get("/auth/token/valid", summary="Check If current token is Valid")
    async def valid_token(request: Request):
        account = signed_in.accounts.get(request.state.user)
        if account is None:  # removed since the access check
            raise HTTPException(status_code=401, detail="the account was removed", headers={"WWW-Authenticate": "Bearer"})
        return User(username=account.username, roles=granted(account.roles)).model_dump()

    def page(message: str = "", next_path: str = DEFAULT_NEXT, status: int = 200, headers: Optional[dict] = None):
        shown = f'<p class="message" role="alert">{html.escape(message)}</p>' if message else ""
        body = PAGE.substitute(message=shown, next=html.escape(next_path, quote=True))
        return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})

    def local(next_path: Optional[str]) -> str:
        return next_path if next_path and LOCAL_PATH.match(next_path) else DEFAULT_NEXT

    @router.get("/login", include_in_schema=False)
    async def login_page(next: Optional[str] = None):
        return page(next_path=local(next))

    @router.post("/login", include_in_schema=False)
    async def login(request: Request, username: str = Form(""), password: str = Form(""), next: str = Form(DEFAULT_NEXT)):
        try:
            account = await sign_in(request, username, password)
        except SignInRefused as e:
            return page(e.message, local(next), e.status, e.headers)
        answer = RedirectResponse(local(next), status_code=303)
        answer.set_cookie(
            SESSION_COOKIE,
            signed_in.tokens.issue(account),
            max_age=signed_in.tokens.seconds,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @router.api_route("/logout", methods=["GET", "POST"], include_in_schema=False)
    async def logout(request: Request):
        """Ends the browser's session (its cookie) and, sent with ``Authorization: Bearer``, that token: both
        are refused from now on, wherever a copy of them is."""
        bearer, via = credentials(request)
        for token in {request.cookies.get(SESSION_COOKIE), bearer if via == "bearer" else None} - {None}:
            who = signed_in.sign_out(token)
            if who:
                audit.record("logout", who, request.client.host if request.client else None)
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer

    app.include_router(router)
