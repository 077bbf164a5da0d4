"""The access check on an app shaped like the server (same routes, MONAI Label's CORS middleware),
driven over HTTP in-process: 401, 403, the login page and its cookie, the origin check, CORS,
the audit log, and the refuse-to-start rule."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.testclient import TestClient
from monailabel.endpoints.user.auth import RBAC, User
from starlette.middleware import Middleware
from test_auth_users import fast_bcrypt  # noqa: F401  (a fixture: cheap hashes)

from lib.conf import Conf, ConfError
from lib.server.auth import install as access_control
from lib.server.auth.access import SESSION_COOKIE
from lib.server.auth.context import require_for_write, signed_in_user
from lib.server.auth.exposure import ExposedWithoutAccounts
from lib.server.auth.roles import ADMIN, ANNOTATOR, USER
from lib.server.auth.rules import SAVE_INFERENCE_RESULT
from lib.server.auth.users import Account, hash_password, read, write

PASSWORDS = {"uma": "uma-password", "anna": "anna-password", "adam": "adam-password"}
ROLES = {"uma": USER, "anna": ANNOTATOR, "adam": ADMIN}
ALLOWED = "https://viewer.hospital.example"


def server_like_app() -> FastAPI:
    """Routes of the server's shape, each answering who asked; CORS as MONAI Label installs it."""
    app = FastAPI(middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"])])
    who = lambda: {"user": signed_in_user()}  # noqa: E731
    app.get("/info/")(who)
    app.get("/ohif/{path:path}")(lambda path: {"user": signed_in_user()})
    app.put("/datastore/label")(who)
    app.delete("/datastore/label")(who)
    app.post("/train/{model}")(lambda model: {"user": signed_in_user()})

    @app.post("/infer/{model}")
    def infer(model: str, save_label: bool = False):
        """As the app's infer: a user's route, whose result only an annotator may save."""
        if save_label:
            require_for_write(SAVE_INFERENCE_RESULT, "save an inference result as a label")
        return {"user": signed_in_user(), "saved": save_label}

    @app.get("/datastore/label/info")
    async def as_monai_label_sees_it(user: User = Depends(RBAC(USER))):
        return {"user": user.username}

    return app


@pytest.fixture(scope="module")
def users_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("users") / "users.json"
    write(str(path), {n: Account(n, hash_password(p), (ROLES[n],)) for n, p in PASSWORDS.items()})
    return str(path)


@pytest.fixture
def server(tmp_path, users_file):
    app = server_like_app()
    conf = {"auth_users": users_file, "cors_origins": ALLOWED, "login_delay_seconds": "0", "login_max_failures": "3"}
    access_control.install(app, Conf(conf), str(tmp_path))
    with TestClient(app, base_url="http://annotate.hospital.example") as client:
        yield client


def token(client, name: str) -> dict:
    answer = client.post("/auth/token", data={"username": name, "password": PASSWORDS[name], "grant_type": "password"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer"
    return {"Authorization": f"Bearer {body['access_token']}"}


def audit(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_auth_contract_of_monai_label(server):
    assert server.get("/auth/").json()["enabled"] is True
    valid = server.get("/auth/token/valid", headers=token(server, "anna"))
    assert valid.status_code == 200 and valid.json()["username"] == "anna"
    assert valid.json()["roles"] == [USER, ANNOTATOR]
    assert server.get("/auth/token/valid").status_code == 401


def test_anonymous_requests_are_refused(server):
    for method, path in [("GET", "/info/"), ("PUT", "/datastore/label"), ("POST", "/train/x"), ("GET", "/nothing")]:
        answer = server.request(method, path)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", (method, path)
        assert "not signed in" in answer.json()["detail"]


def test_roles(server):
    expected = {
        "uma": {"/info/": 200, "PUT": 403, "DELETE": 403, "/train/x": 403},
        "anna": {"/info/": 200, "PUT": 200, "DELETE": 403, "/train/x": 403},
        "adam": {"/info/": 200, "PUT": 200, "DELETE": 200, "/train/x": 200},
    }
    for name, answers in expected.items():
        headers = token(server, name)
        got = {
            "/info/": server.get("/info/", headers=headers),
            "PUT": server.put("/datastore/label", headers=headers),
            "DELETE": server.delete("/datastore/label", headers=headers),
            "/train/x": server.post("/train/x", headers=headers),
        }
        assert {k: a.status_code for k, a in got.items()} == answers, name
        assert got["/info/"].json() == {"user": name}
        # MONAI Label's own endpoints see the signed-in user, not its default "admin"
        assert server.get("/datastore/label/info", headers=headers).json() == {"user": name}
    refused = server.post("/train/x", headers=token(server, "anna")).json()["detail"]
    assert refused == f'role "{ADMIN}" is required for POST /train/{{model}}; anna has {ANNOTATOR}'


@pytest.mark.parametrize("bad", ["Bearer nonsense", "Bearer a.b.c", "Basic YWRhbTphZGFtLXBhc3N3b3Jk"])
def test_bad_credentials(server, bad):
    answer = server.get("/info/", headers={"Authorization": bad})
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")


def test_a_removed_user_or_a_changed_password_ends_the_session(server, users_file):
    headers = token(server, "uma")
    accounts = read(users_file)
    try:
        write(users_file, {**accounts, "uma": Account("uma", hash_password("changed-password"), (USER,))})
        assert server.get("/info/", headers=headers).status_code == 401
        write(users_file, {k: v for k, v in accounts.items() if k != "uma"})
        assert server.get("/info/", headers=headers).status_code == 401
    finally:
        write(users_file, accounts)
    assert server.get("/info/", headers=token(server, "uma")).status_code == 200


def test_browser_is_sent_to_the_login_page_and_back(server):
    page = server.get("/ohif/viewer?StudyInstanceUIDs=1.2", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fohif%2Fviewer%3FStudyInstanceUIDs%3D1.2"
    form = server.get(page.headers["location"])
    assert form.status_code == 200 and 'name="password"' in form.text and 'value="/ohif/viewer?StudyInstanceUIDs=1.2"' in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]

    wrong = server.post("/login", data={"username": "anna", "password": "wrong", "next": "/ohif/"})
    assert wrong.status_code == 401 and "wrong username or password" in wrong.text and SESSION_COOKIE not in server.cookies

    signed = server.post("/login", data={"username": "anna", "password": PASSWORDS["anna"], "next": "/ohif/viewer"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/ohif/viewer"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie and "Max-Age=28800" in cookie
    assert "Secure" not in cookie  # plain http here; set on https
    assert server.get("/ohif/viewer").json() == {"user": "anna"}

    session = server.cookies[SESSION_COOKIE]
    server.get("/logout", follow_redirects=False)
    assert SESSION_COOKIE not in server.cookies
    assert server.get("/ohif/viewer").status_code == 401
    # A copy of the cookie is worth nothing after signing out: the token was revoked on the server.
    server.cookies.set(SESSION_COOKIE, session)
    copied = server.get("/ohif/viewer")
    assert copied.status_code == 401 and "signed out" in copied.json()["detail"]


def test_signing_out_revokes_a_bearer_token(server, tmp_path):
    uma, anna = token(server, "uma"), token(server, "anna")
    assert server.post("/logout", headers=uma, follow_redirects=False).status_code == 303
    refused = server.get("/info/", headers=uma)
    assert refused.status_code == 401 and refused.json()["detail"] == "this token was signed out: sign in again"
    assert server.get("/info/", headers=anna).status_code == 200  # only that token
    assert server.get("/info/", headers=token(server, "uma")).status_code == 200  # a new sign-in works
    assert ("logout", "uma") in [(r["event"], r["user"]) for r in audit(tmp_path)]


def test_a_route_without_a_rule_is_refused_in_plain_words(server):
    refused = server.post("/nothing/here", headers=token(server, "anna"))
    assert refused.status_code == 403
    assert refused.json()["detail"] == f'role "{ADMIN}" is required for POST /nothing/here (a route with no access rule); anna has {ANNOTATOR}'


def test_saving_an_inference_result_is_an_annotators_write(server, tmp_path):
    uma, anna = token(server, "uma"), token(server, "anna")
    assert server.post("/infer/spleen", headers=uma).json() == {"user": "uma", "saved": False}
    refused = server.post("/infer/spleen?save_label=true", headers=uma)
    assert refused.status_code == 403
    assert refused.json()["detail"] == f'role "{ANNOTATOR}" is required to save an inference result as a label; uma has {USER}'
    assert server.post("/infer/spleen?save_label=true", headers=anna).json() == {"user": "anna", "saved": True}
    events = [(r["event"], r["user"], r.get("status")) for r in audit(tmp_path) if r["event"] not in ("server_start", "login")]
    assert events == [("denied", "uma", 403), ("save_label", "anna", 200)]


@pytest.mark.parametrize("next_path", ["//evil.example/x", "/\\evil.example", "https://evil.example", "javascript:alert(1)"])
def test_login_never_sends_the_browser_elsewhere(server, next_path):
    signed = server.post("/login", data={"username": "anna", "password": PASSWORDS["anna"], "next": next_path}, follow_redirects=False)
    assert signed.headers["location"] == "/ohif/"


def test_cookie_sessions_change_nothing_from_other_origins(server):
    server.post("/login", data={"username": "anna", "password": PASSWORDS["anna"]})
    own = "http://annotate.hospital.example"
    assert server.put("/datastore/label", headers={"Origin": own}).status_code == 200
    assert server.put("/datastore/label", headers={"Referer": own + "/ohif/viewer"}).status_code == 200
    assert server.put("/datastore/label", headers={"Origin": ALLOWED}).status_code == 200
    assert server.put("/datastore/label").status_code == 403  # neither Origin nor Referer
    refused = server.put("/datastore/label", headers={"Origin": "http://annotate.hospital.example:8080"})
    assert refused.status_code == 403 and "not allowed" in refused.json()["detail"]
    assert server.get("/info/", headers={"Origin": "https://evil.example"}).status_code == 200  # reading: CORS decides


def test_cors(server):
    preflight = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"}
    allowed = server.options("/datastore/label", headers={"Origin": ALLOWED, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED
    assert allowed.headers["access-control-allow-credentials"] == "true"
    foreign = server.options("/datastore/label", headers={"Origin": "https://evil.example", **preflight})
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
    # Stock MONAI Label echoed any origin when a cookie came along: no more.
    server.cookies.set("x", "y")
    read = server.get("/info/", headers={"Origin": "https://evil.example", **token(server, "uma")})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
    # A refusal is readable by an allowed page.
    assert server.get("/info/", headers={"Origin": ALLOWED}).headers["access-control-allow-origin"] == ALLOWED


def test_throttled_sign_in(server):
    for _ in range(3):
        assert server.post("/auth/token", data={"username": "uma", "password": "guess-1234"}).status_code == 401
    refused = server.post("/auth/token", data={"username": "uma", "password": PASSWORDS["uma"]})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert server.post("/login", data={"username": "uma", "password": PASSWORDS["uma"]}).status_code == 429
    assert server.post("/auth/token", data={"username": "anna", "password": PASSWORDS["anna"]}).status_code == 200


def test_sign_in_bodies_are_small(server):
    answer = server.post("/auth/token", content=b"username=" + b"a" * 20_000, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413


def test_audit_log(server, tmp_path):
    server.post("/auth/token", data={"username": "anna", "password": "wrong"})
    headers = token(server, "anna")
    server.put("/datastore/label?image=ct&tag=final", headers=headers)
    server.post("/train/x", headers=headers)
    server.post("/train/x", headers=token(server, "adam"))
    lines = audit(tmp_path)
    assert [(r["event"], r["user"]) for r in lines] == [
        ("server_start", None),
        ("login_failed", "anna"),
        ("login", "anna"),
        ("save_label", "anna"),
        ("denied", "anna"),
        ("login", "adam"),
        ("train", "adam"),
    ]
    saved = lines[3]
    assert saved["query"] == {"image": "ct", "tag": "final"} and saved["status"] == 200 and saved["address"] == "testclient"
    assert lines[0]["access"] == "accounts" and all(r["time"].endswith("Z") for r in lines)
    assert not any(p in (tmp_path / "audit.jsonl").read_text() for p in PASSWORDS.values())


def install_with(tmp_path, monkeypatch, conf: dict, argv: list[str] | None = None, keycloak: bool = False) -> FastAPI:
    monkeypatch.setattr(sys, "argv", argv or ["pytest"])
    monkeypatch.setattr("monailabel.config.settings.MONAI_LABEL_AUTH_ENABLE", keycloak)
    app = server_like_app()
    access_control.install(app, Conf(conf), str(tmp_path))
    return app


def start_server_argv(host: str) -> list[str]:
    return ["/venv/lib/python3.11/site-packages/monailabel/main.py", "start_server", "--app", "a", "--studies", "s", "--host", host]


@pytest.mark.parametrize("argv", [None, start_server_argv("0.0.0.0"), start_server_argv("192.0.2.7"), start_server_argv("::")])
def test_refuses_to_start_exposed_without_accounts(tmp_path, monkeypatch, argv):
    with pytest.raises(ExposedWithoutAccounts, match="--conf auth_users FILE.*--conf auth none"):
        install_with(tmp_path, monkeypatch, {}, argv)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_may_run_without_accounts(tmp_path, monkeypatch, host):
    with TestClient(install_with(tmp_path, monkeypatch, {}, start_server_argv(host))) as client:
        assert client.get("/info/").json() == {"user": None}
        assert client.get("/auth/").status_code == 404  # Slicer then asks for no password
    assert audit(tmp_path)[0]["access"] == "loopback"


def test_explicit_opt_out_warns(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        app = install_with(tmp_path, monkeypatch, {"auth": "none"}, start_server_argv("0.0.0.0"))
    assert "NO ACCOUNTS on 0.0.0.0" in caplog.text
    with TestClient(app) as client:
        assert client.post("/train/x").status_code == 200


def test_keycloak_sites_keep_monai_label_in_charge(tmp_path, monkeypatch):
    with TestClient(install_with(tmp_path, monkeypatch, {}, start_server_argv("0.0.0.0"), keycloak=True)) as client:
        assert client.post("/train/x").status_code == 200  # MONAI Label's own RBAC dependencies check it
    assert audit(tmp_path)[0]["access"] == "keycloak"


@pytest.mark.parametrize(
    "conf, keycloak, message",
    [
        ({"auth": "none", "auth_users": "u.json"}, False, "both given"),
        ({"auth_users": "u.json"}, True, "both given"),
        ({"auth": "off"}, False, "accepts only 'none'"),
        ({"auth": "none", "cors_origins": "*"}, False, "'\\*' is refused"),
        ({"auth": "none", "cors_origins": "evil.example"}, False, "scheme://host"),
    ],
)
def test_conflicting_options(tmp_path, monkeypatch, conf, keycloak, message):
    with pytest.raises(ConfError, match=message):
        install_with(tmp_path, monkeypatch, conf, keycloak=keycloak)
