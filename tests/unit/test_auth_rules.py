"""Every route of the real server has an access rule, and the table has no rule for a route that
does not exist: a route added without a rule fails here instead of answering anyone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from lib.corrections import hooks as learning_loop
from lib.heads import routes as head_routes
from lib.pacs import proxy
from lib.server import routes as request_routes
from lib.server.auth import routes as auth_routes
from lib.server.auth.access import SignedIn
from lib.server.auth.audit import AuditLog
from lib.server.auth.revoked import RevokedTokens
from lib.server.auth.roles import ADMIN, ANNOTATOR, REVIEWER, USER
from lib.server.auth.rules import (
    PARAMETER_WRITES,
    PUBLIC,
    RULES,
    SAVE_INFERENCE_RESULT,
    SIGNED_IN,
    UNLISTED,
    rule_for,
)
from lib.server.auth.throttle import LoginThrottle
from lib.server.auth.tokens import Tokens
from lib.server.auth.users import Account, Accounts, hash_password, write
from lib.server.infer_queue import InferQueue


def routes_of(app) -> set[tuple[str, str]]:
    found = set()
    for context in iter_route_contexts(app.router.routes):
        if isinstance(context.original_route, Mount):
            found.add(("GET", context.path + "/{path:path}"))
            continue
        for method in context.methods:
            # Starlette answers HEAD with the GET route where a route offers both.
            if not (method == "HEAD" and "GET" in context.methods):
                found.add((method, context.path))
    return found


@pytest.fixture(scope="module")
def server_routes(tmp_path_factory) -> set[tuple[str, str]]:
    """MONAI Label's FastAPI app with everything the wholebody app installs on it."""
    from monailabel.app import app

    folder = tmp_path_factory.mktemp("auth")
    users = folder / "users.json"
    write(str(users), {"admin": Account("admin", hash_password("password-1"), (ADMIN,))})
    signed_in = SignedIn(Accounts(str(users)), Tokens(b"k" * 32, 1.0), RevokedTokens(str(folder / "revoked.json")))
    head_routes.install(app, {})
    learning_loop.install(app, SimpleNamespace(_infers={}))
    proxy.install(app)
    request_routes.install(app, InferQueue(["cpu"], capacity=1, wait_s=1.0))
    auth_routes.install(app, signed_in, LoginThrottle(5, 20, 15, 0.5), AuditLog(str(folder / "audit.jsonl")))
    return routes_of(app)


def test_every_route_has_a_rule(server_routes):
    missing = sorted(r for r in server_routes if r not in RULES)
    assert not missing, f"routes without an entry in lib/server/auth/rules.py: {missing}"


def test_every_rule_has_a_route(server_routes):
    stale = sorted(r for r in RULES if r not in server_routes)
    assert not stale, f"rules for routes the server does not have: {stale}"


def test_checker_sees_routes():
    """The checks above would pass vacuously if no routes were found."""
    from fastapi import FastAPI

    app = FastAPI()
    app.get("/x/{a}")(lambda a: a)
    app.delete("/x/{a}")(lambda a: a)
    assert routes_of(app) >= {("GET", "/x/{a}"), ("DELETE", "/x/{a}")}


@pytest.mark.parametrize(
    "method, path, role",
    [
        ("GET", "/auth/", PUBLIC),
        ("POST", "/auth/token", PUBLIC),
        ("GET", "/auth/token/valid", SIGNED_IN),
        ("GET", "/info/", USER),
        ("GET", "/info", USER),  # FastAPI redirects to /info/: same rule
        ("POST", "/infer/wholebody", USER),
        ("POST", "/activelearning/random", ANNOTATOR),
        ("GET", "/ohif/index.html", USER),
        ("GET", "/ohif/assets/x/y.js", USER),
        ("GET", "/proxy/dicom/wado/studies/1.2/series/3/frames/1", USER),
        ("POST", "/proxy/dicom/stow/studies", ANNOTATOR),
        ("POST", "/proxy/dicom/wado/studies", ANNOTATOR),  # OHIF 3.10's Export DICOM SEG (STOW-RS)
        ("GET", "/ohif/app-config.js", USER),
        ("HEAD", "/datastore/image", USER),
        ("PUT", "/datastore/label", ANNOTATOR),
        ("DELETE", "/datastore/label", REVIEWER),
        ("DELETE", "/datastore/image", ADMIN),
        ("POST", "/train/wholebody", ADMIN),
        ("POST", "/train/wholebody_structures", ADMIN),
        ("DELETE", "/heads/wholebody/lesion", ADMIN),
        ("POST", "/scoring/wholebody_uncertainty", ADMIN),
        ("POST", "/batch/infer/wholebody", ADMIN),
        ("GET", "/queue/", USER),
        ("GET", "/model/wholebody", ADMIN),
        ("GET", "/model/info/wholebody", ADMIN),
        ("GET", "/heads/wholebody", USER),
        ("HEAD", "/openapi.json", USER),
    ],
)
def test_rule_for(method, path, role):
    assert rule_for(method, path)[1].role == role


@pytest.mark.parametrize("method, path", [("GET", "/nothing/here"), ("PATCH", "/datastore/label"), ("GET", "/datastore/labels")])
def test_a_request_no_rule_matches_is_for_admins_only(method, path):
    assert rule_for(method, path) == (None, UNLISTED) and UNLISTED.role == ADMIN


def test_what_changes_something_is_audited():
    changing = [(m, t) for (m, t), rule in RULES.items() if m in ("PUT", "POST", "DELETE") and rule.role in (ANNOTATOR, REVIEWER, ADMIN)]
    assert changing and all(RULES[k].audit for k in changing), [k for k in changing if not RULES[k].audit]


# Every route that changes something and that a role below the annotator's may call, reviewed: what it may
# write, and who may write it. Routes that write labels name the parameter in rules.PARAMETER_WRITES.
BELOW_ANNOTATOR_WRITES = {
    ("POST", "/auth/token"): "signs in: issues a token, writes nothing else",
    ("POST", "/login"): "signs in: issues a token in a cookie",
    ("GET", "/logout"): "revokes the caller's own token",
    ("POST", "/logout"): "revokes the caller's own token",
    ("POST", "/infer/{model}"): "save_label writes a label: an annotator's (PARAMETER_WRITES)",
    ("POST", "/infer/wsi/{model}"): "save_label writes a label: an annotator's (PARAMETER_WRITES)",
    ("POST", "/infer/wsi_v2/{model}"): "save_label writes a label: an annotator's (PARAMETER_WRITES)",
    ("PUT", "/session/"): "a private copy of an image, owned by its creator (lib/datastore/sessions.py)",
    ("DELETE", "/session/{session_id}"): "the caller's own session only (others' answer 404)",
}


def test_every_write_below_the_annotators_role_is_reviewed(server_routes):
    below = {
        (m, t) for (m, t) in server_routes
        if m not in ("GET", "HEAD", "OPTIONS") and RULES.get((m, t), UNLISTED).role in (PUBLIC, SIGNED_IN, USER)
    } | {("GET", "/logout")}
    assert below == set(BELOW_ANNOTATOR_WRITES), (
        f"not reviewed: {sorted(below - set(BELOW_ANNOTATOR_WRITES))}; gone: {sorted(set(BELOW_ANNOTATOR_WRITES) - below)}"
    )
    saving = {k for k, why in BELOW_ANNOTATOR_WRITES.items() if "PARAMETER_WRITES" in why}
    assert saving == set(PARAMETER_WRITES)
    assert all(PARAMETER_WRITES[k] == {"save_label": SAVE_INFERENCE_RESULT} for k in saving)
    assert SAVE_INFERENCE_RESULT.role == ANNOTATOR and SAVE_INFERENCE_RESULT.audit == "save_label"
