"""Tokens: signed, expiring, HS256 only, each with its own id by which signing out revokes it; the signing key
generated once, mode 0600, or from the environment."""

from __future__ import annotations

import base64
import json
import os
import stat
import time

import jwt
import pytest

from lib.server.auth.revoked import RevokedTokens
from lib.server.auth.roles import ANNOTATOR
from lib.server.auth.tokens import ISSUER, KEY_ENV, InvalidToken, SigningKeyError, Tokens, load_key
from lib.server.auth.users import Account

KEY = b"a-test-signing-key-of-more-than-64-characters-as-HS512-wants-too!"
ALICE = Account("alice", "$2b$12$" + "a" * 53, (ANNOTATOR,))


def claims(**changes) -> dict:
    now = int(time.time())
    return {"sub": "alice", "roles": [ANNOTATOR], "pwv": ALICE.password_version, "iss": ISSUER, "iat": now, "exp": now + 60, "jti": "t1", **changes}


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_issued_decodes_to_its_user():
    tokens = Tokens(KEY, 30)
    decoded = tokens.decode(tokens.issue(ALICE))
    assert decoded.username == "alice" and decoded.password_version == ALICE.password_version
    assert 29 * 60 <= decoded.expires - time.time() <= 30 * 60


def test_expired():
    token = jwt.encode(claims(iat=int(time.time()) - 120, exp=int(time.time()) - 60), KEY, algorithm="HS256")
    with pytest.raises(InvalidToken, match="expired"):
        Tokens(KEY, 30).decode(token)


def test_tampered_payload():
    header, _, signature = Tokens(KEY, 30).issue(ALICE).split(".")
    forged = f"{header}.{b64(claims(sub='admin'))}.{signature}"
    with pytest.raises(InvalidToken, match="InvalidSignatureError"):
        Tokens(KEY, 30).decode(forged)


def test_signed_with_another_key():
    with pytest.raises(InvalidToken):
        Tokens(KEY, 30).decode(jwt.encode(claims(), b"another-key-of-more-than-32-characters", algorithm="HS256"))


def test_alg_none():
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    with pytest.raises(InvalidToken, match="InvalidAlgorithmError"):
        Tokens(KEY, 30).decode(unsigned)


def test_other_algorithm_with_the_same_key():
    with pytest.raises(InvalidToken, match="InvalidAlgorithmError"):
        Tokens(KEY, 30).decode(jwt.encode(claims(), KEY, algorithm="HS512"))


@pytest.mark.parametrize("missing", ["exp", "pwv", "sub", "iss"])
def test_claims_required(missing):
    data = claims()
    del data[missing]
    with pytest.raises(InvalidToken):
        Tokens(KEY, 30).decode(jwt.encode(data, KEY, algorithm="HS256"))


def test_other_issuer():
    with pytest.raises(InvalidToken, match="InvalidIssuerError"):
        Tokens(KEY, 30).decode(jwt.encode(claims(iss="keycloak"), KEY, algorithm="HS256"))


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 5000])
def test_garbage(garbage):
    with pytest.raises(InvalidToken):
        Tokens(KEY, 30).decode(garbage)


def test_key_generated_once_with_mode_0600(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "auth_token.key"
    first = load_key(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(first) >= 32
    assert load_key(str(path)) == first
    assert first.decode() not in caplog.text


def test_key_from_the_environment(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, "e" * 40)
    assert load_key(str(tmp_path / "unused.key")) == b"e" * 40
    assert not (tmp_path / "unused.key").exists() and "e" * 40 not in caplog.text
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(SigningKeyError, match="at least 32"):
        load_key(str(tmp_path / "unused.key"))


def test_each_token_has_its_own_id():
    tokens = Tokens(KEY, 30)
    first, second = tokens.decode(tokens.issue(ALICE)), tokens.decode(tokens.issue(ALICE))
    assert first.token_id != second.token_id and len(first.token_id) >= 16


def test_a_token_without_an_id_is_refused():
    """Tokens issued before sign-out could revoke them cannot be revoked: they are refused."""
    without = {k: v for k, v in claims().items() if k != "jti"}
    with pytest.raises(InvalidToken, match="MissingRequiredClaimError"):
        Tokens(KEY, 30).decode(jwt.encode(without, KEY, algorithm="HS256"))


def test_signed_out_tokens_stay_revoked_after_a_restart(tmp_path):
    path = str(tmp_path / "revoked.json")
    revoked = RevokedTokens(path)
    revoked.revoke("gone", int(time.time()) + 60)
    revoked.revoke("old", int(time.time()) - 1)  # expired already: dropped at the next write
    revoked.revoke("also-gone", int(time.time()) + 60)
    again = RevokedTokens(path)
    assert "gone" in again and "also-gone" in again and "old" not in again and "other" not in again
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_an_unreadable_revocation_list_stops_the_server(tmp_path):
    path = tmp_path / "revoked.json"
    path.write_text("{not json")
    with pytest.raises(RuntimeError, match="unreadable"):
        RevokedTokens(str(path))
