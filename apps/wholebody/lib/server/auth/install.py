"""Puts access control in front of the server, from the app's ``on_init_complete`` (after every
other route is in place, before the server accepts a connection).

Options (``--conf``):
- ``auth_users FILE``: built-in accounts from this users file (``users.py``);
- ``auth none``: no accounts, explicitly (needed off loopback; warned about at every start);
- ``auth_token_minutes`` (480): how long a token or browser session lasts;
- ``auth_key_file`` (``<model_dir>/auth_token.key``): the token signing key, generated if missing
  (or ``WHOLEBODY_AUTH_KEY`` in the environment);
- ``cors_origins``: other origins whose pages may call the server (none by default);
- ``trusted_proxies``: reverse proxies whose ``X-Forwarded-For``/``-Proto`` are believed (none by
  default, loopback included: ``forwarded.py``);
- ``audit_log`` (``<model_dir>/audit.jsonl``): the audit log;
- ``login_max_failures`` (5) per user and ``login_max_failures_per_address`` (20) failed sign-ins
  within ``login_window_minutes`` (15) before 429; ``login_delay_seconds`` (0.5): the first
  failure's delay, doubled for each further one.

With ``MONAI_LABEL_AUTH_ENABLE`` (Keycloak) and no ``auth_users``, MONAI Label's own checks stay
in charge; CORS, the origin check and the audit log still apply.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI
from monailabel.config import settings
from starlette.middleware import Middleware

from lib.conf import Conf, ConfError
from lib.server.auth import attribution, cors, forwarded, routes
from lib.server.auth.access import AccessCheck, SignedIn
from lib.server.auth.audit import AuditLog
from lib.server.auth.exposure import ExposedWithoutAccounts, is_loopback, listen_host, refusal
from lib.server.auth.revoked import RevokedTokens
from lib.server.auth.throttle import LoginThrottle
from lib.server.auth.tokens import Tokens, load_key
from lib.server.auth.users import Accounts

logger = logging.getLogger(__name__)


def _accounts(options: Conf, users_file: str, model_dir: str) -> tuple[SignedIn, LoginThrottle]:
    minutes = options.float("auth_token_minutes", 480.0, low=1.0, high=60.0 * 24 * 30)
    key = load_key(options.path("auth_key_file", os.path.join(model_dir, "auth_token.key")))
    revoked = RevokedTokens(os.path.join(model_dir, "revoked_tokens.json"))
    signed_in = SignedIn(Accounts(users_file), Tokens(key, minutes), revoked)
    throttle = LoginThrottle(
        per_user=options.int("login_max_failures", 5, minimum=1),
        per_address=options.int("login_max_failures_per_address", 20, minimum=1),
        window_minutes=options.float("login_window_minutes", 15.0, low=0.0),
        delay_seconds=options.float("login_delay_seconds", 0.5, low=0.0, high=8.0),
    )
    return signed_in, throttle


def access_mode(options: Conf) -> str:
    """'accounts', 'keycloak', 'none' (explicit) or 'loopback'; raises where the server must not
    start. Cheap: the app calls it before loading models, so that a refusal comes at once."""
    try:
        return _mode(options, listen_host())
    except ExposedWithoutAccounts as e:
        logger.error(str(e))
        raise


def _mode(options: Conf, host) -> str:
    opt_out = options.raw("auth")
    if opt_out not in (None, "none"):
        raise ConfError(f"'auth' accepts only 'none' (no accounts, explicitly), got {opt_out!r}")
    users_file = options.raw("auth_users")
    if users_file and (opt_out or settings.MONAI_LABEL_AUTH_ENABLE):
        other = "--conf auth none" if opt_out else "MONAI_LABEL_AUTH_ENABLE (Keycloak)"
        raise ConfError(f"--conf auth_users and {other} both given: choose one")
    if users_file:
        return "accounts"
    if settings.MONAI_LABEL_AUTH_ENABLE:
        return "keycloak"
    if opt_out:
        return "none"
    if is_loopback(host):
        return "loopback"
    raise ExposedWithoutAccounts(refusal(host))


def install(app: FastAPI, options: Conf, model_dir: str) -> None:
    mode, host = access_mode(options), listen_host()
    audit = AuditLog(options.path("audit_log", os.path.join(model_dir, "audit.jsonl")))
    origins = cors.allowed_origins(options)
    proxies = forwarded.install(options)
    signed_in = None
    if mode == "accounts":
        signed_in, throttle = _accounts(options, options.path("auth_users", ""), model_dir)
        routes.install(app, signed_in, throttle, audit)
        attribution.install(app)
    if mode == "none":
        logger.warning(
            f"--conf auth none: NO ACCOUNTS on {host or 'an unknown address'}: anyone who can reach this server can "
            "read every study, change or delete every label and start training"
        )
    logger.info(
        f"Access: {mode}; audit log {audit.path}; CORS origins: {origins or 'none but our own pages'}; "
        f"X-Forwarded-For believed from: {', '.join(proxies) or 'nobody'}"
    )

    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not AccessCheck]
    place = cors.install(app, origins)
    # Inside CORS: refusals still carry CORS headers, so an allowed page can read them.
    app.user_middleware.insert(place + 1, Middleware(AccessCheck, signed_in=signed_in, audit=audit, origins=origins))
    app.middleware_stack = None
    audit.record("server_start", None, None, access=mode, host=host)
