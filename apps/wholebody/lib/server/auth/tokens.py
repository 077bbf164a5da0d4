"""Signed bearer tokens (JWT, HS256) with an expiry, and the key that signs them.

The key comes from the environment (``WHOLEBODY_AUTH_KEY``) or a file (``--conf auth_key_file``);
a missing file is generated once, mode 0600. The key is never logged. Decoding accepts HS256
only, so a token that says ``alg: none`` (or any other algorithm) is refused, as are an expired
one and one whose signature does not match. Each token has a random id (``jti``) by which signing out
revokes it (``revoked.py``).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass

import jwt

from lib.server.auth.users import Account

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
ISSUER = "monailabel-wholebody"
KEY_ENV = "WHOLEBODY_AUTH_KEY"
MIN_KEY_CHARS = 32


class SigningKeyError(RuntimeError):
    """No usable signing key."""


class InvalidToken(Exception):
    """A token that is missing, malformed, expired, tampered with or not ours; the message says which."""


@dataclass(frozen=True)
class Claims:
    username: str
    password_version: str
    expires: int
    token_id: str


def load_key(path: str) -> bytes:
    """The signing key: the environment's, else the file's, else a new file (0600)."""
    from_env = os.environ.get(KEY_ENV)
    if from_env is not None:
        if len(from_env) < MIN_KEY_CHARS:
            raise SigningKeyError(f"{KEY_ENV} must hold at least {MIN_KEY_CHARS} characters")
        logger.info(f"Token signing key: from the environment ({KEY_ENV})")
        return from_env.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        logger.info(f"Token signing key: generated in {path}")
    if os.stat(path).st_mode & 0o077:
        logger.warning(f"token signing key {path} is readable by other users: chmod 600 it")
    with open(path) as f:
        key = f.read().strip()
    if len(key) < MIN_KEY_CHARS:
        raise SigningKeyError(f"token signing key {path} must hold at least {MIN_KEY_CHARS} characters")
    return key.encode()


class Tokens:
    def __init__(self, key: bytes, minutes: float):
        self._key = key
        self.seconds = int(minutes * 60)

    def issue(self, account: Account) -> str:
        now = int(time.time())
        claims = {
            "sub": account.username,
            "roles": list(account.roles),
            "pwv": account.password_version,
            "iss": ISSUER,
            "iat": now,
            "exp": now + self.seconds,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def decode(self, token: str) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iat", "iss", "pwv", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired: sign in again") from None
        except jwt.InvalidTokenError as e:
            raise InvalidToken(f"the token is not valid ({type(e).__name__})") from None
        return Claims(str(claims["sub"]), str(claims["pwv"]), int(claims["exp"]), str(claims["jti"]))
