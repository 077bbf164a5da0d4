"""The role each route of the server needs, and the routes the audit log records.

Every route has an entry, as MONAI Label's RBAC names them: reading and inference need a user;
saving labels (also an inference result saved with ``save_label``, checked where the parameter is
read: ``PARAMETER_WRITES`` below) and asking for the next study an annotator; deleting labels a
reviewer; training, scoring, batch jobs, model files, deleting studies or decoder heads an admin. A request no entry matches answers only
to an admin, and ``tests/unit/test_auth_rules.py`` fails for any route of the app without an
entry: a new route cannot slip through unprotected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from starlette.routing import compile_path

from lib.server.auth.roles import ADMIN, ANNOTATOR, RANK, REVIEWER, USER

PUBLIC = "public"  # login, logout and "is auth enabled?": no token needed
SIGNED_IN = "signed-in"  # any valid token, whatever its role


@dataclass(frozen=True)
class Rule:
    role: str
    audit: Optional[str] = None  # the event name in the audit log, for routes that change something


def _rules() -> dict[tuple[str, str], Rule]:
    rules = {
        ("GET", "/auth/"): Rule(PUBLIC),
        ("POST", "/auth/token"): Rule(PUBLIC),
        ("GET", "/auth/token/valid"): Rule(SIGNED_IN),
        ("GET", "/login"): Rule(PUBLIC),
        ("POST", "/login"): Rule(PUBLIC),
        ("GET", "/logout"): Rule(PUBLIC),
        ("POST", "/logout"): Rule(PUBLIC),
        ("GET", "/favicon.ico"): Rule(PUBLIC),
        ("GET", "/"): Rule(USER),
        ("GET", "/openapi.json"): Rule(USER),
        ("GET", "/docs"): Rule(USER),
        ("GET", "/static/{path:path}"): Rule(USER),
        ("GET", "/ohif/{path:path}"): Rule(USER),
        ("GET", "/info/"): Rule(USER),
        ("GET", "/queue/"): Rule(USER),
        ("POST", "/infer/{model}"): Rule(USER),
        ("POST", "/infer/wsi/{model}"): Rule(USER),
        ("POST", "/infer/wsi_v2/{model}"): Rule(USER),
        ("GET", "/train/"): Rule(USER),
        ("GET", "/scoring/"): Rule(USER),
        ("GET", "/batch/infer"): Rule(USER),
        ("GET", "/heads/{model}"): Rule(USER),
        ("GET", "/datastore/"): Rule(USER),
        ("GET", "/datastore/image"): Rule(USER),
        ("HEAD", "/datastore/image"): Rule(USER),
        ("GET", "/datastore/image/info"): Rule(USER),
        ("GET", "/datastore/label"): Rule(USER),
        ("HEAD", "/datastore/label"): Rule(USER),
        ("GET", "/datastore/label/info"): Rule(USER),
        ("PUT", "/session/"): Rule(USER),
        ("GET", "/session/{session_id}"): Rule(USER),
        ("DELETE", "/session/{session_id}"): Rule(USER),
        # Next Sample hands a study out for annotation (held from others, recorded in its info).
        ("POST", "/activelearning/{strategy}"): Rule(ANNOTATOR, "next_sample"),
        ("PUT", "/datastore/"): Rule(ANNOTATOR, "upload_image"),
        ("PUT", "/datastore/image"): Rule(ANNOTATOR, "upload_image"),
        ("PUT", "/datastore/image/info"): Rule(ANNOTATOR, "update_image_info"),
        ("PUT", "/datastore/label"): Rule(ANNOTATOR, "save_label"),
        ("PUT", "/datastore/label/info"): Rule(ANNOTATOR, "update_label_info"),
        ("PUT", "/datastore/updatelabelinfo"): Rule(ANNOTATOR, "update_label_info"),
        ("DELETE", "/datastore/label"): Rule(REVIEWER, "delete_label"),
        ("DELETE", "/datastore/"): Rule(ADMIN, "delete_image"),
        ("DELETE", "/datastore/image"): Rule(ADMIN, "delete_image"),
        ("GET", "/datastore/dataset"): Rule(ADMIN, "download_dataset"),
        ("POST", "/train/"): Rule(ADMIN, "train"),
        ("POST", "/train/{model}"): Rule(ADMIN, "train"),
        ("DELETE", "/train/"): Rule(ADMIN, "train_stop"),
        ("POST", "/scoring/"): Rule(ADMIN, "scoring"),
        ("POST", "/scoring/{method}"): Rule(ADMIN, "scoring"),
        ("DELETE", "/scoring/"): Rule(ADMIN, "scoring_stop"),
        ("POST", "/batch/infer/{model}"): Rule(ADMIN, "batch_infer"),
        ("DELETE", "/batch/infer"): Rule(ADMIN, "batch_infer_stop"),
        ("DELETE", "/heads/{model}/{head}"): Rule(ADMIN, "delete_head"),
        ("GET", "/model/{model}"): Rule(ADMIN),
        ("GET", "/model/info/{model}"): Rule(ADMIN),
        ("PUT", "/model/{model}"): Rule(ADMIN, "upload_model"),
        ("DELETE", "/model/{model}"): Rule(ADMIN, "delete_model"),
        ("GET", "/versions/"): Rule(USER),
        ("GET", "/versions/{slot}"): Rule(USER),
        ("PUT", "/versions/{slot}/pin/{version}"): Rule(ADMIN, "pin_version"),
        ("DELETE", "/versions/{slot}/pin"): Rule(ADMIN, "unpin_version"),
        ("DELETE", "/versions/{slot}/{version}"): Rule(ADMIN, "delete_version"),
        ("GET", "/corrections/report"): Rule(REVIEWER),
        ("GET", "/corrections/report.html"): Rule(REVIEWER),
        ("GET", "/logs/"): Rule(ADMIN),
        ("GET", "/logs/gpu"): Rule(ADMIN),
        ("POST", "/reload"): Rule(ADMIN, "reload"),
    }
    # OHIF reads the PACS through the proxy; writing to it (STOW) is an annotator's.
    for op in ("wado/", "qido/", "stow/", ""):
        rules[("GET", f"/proxy/dicom/{op}{{path:path}}")] = Rule(USER)
        rules[("POST", f"/proxy/dicom/{op}{{path:path}}")] = Rule(ANNOTATOR, "pacs_post")
    return rules


RULES = _rules()
UNLISTED = Rule(ADMIN)

# Writes that a request's parameters decide, on routes whose own rule is lower, checked where the parameter
# is read (``context.require_for_write``). ``tests/unit/test_auth_rules.py`` lists every route below the
# annotator's that changes something, with what it may write, so a new one cannot slip through either.
SAVE_INFERENCE_RESULT = Rule(ANNOTATOR, "save_label")
PARAMETER_WRITES = {
    ("POST", "/infer/{model}"): {"save_label": SAVE_INFERENCE_RESULT},
    ("POST", "/infer/wsi/{model}"): {"save_label": SAVE_INFERENCE_RESULT},
    ("POST", "/infer/wsi_v2/{model}"): {"save_label": SAVE_INFERENCE_RESULT},
}

_STRICTNESS = {PUBLIC: -2, SIGNED_IN: -1, **RANK}


def _by_method(rules: dict[tuple[str, str], Rule]) -> dict[str, list]:
    """method -> [(template, compiled path regex, rule)], as Starlette compiles route paths."""
    index: dict[str, list] = {}
    for (method, template), rule in rules.items():
        index.setdefault(method, []).append((template, compile_path(template)[0], rule))
    return index


_BY_METHOD = _by_method(RULES)


def rule_for(method: str, path: str) -> tuple[Optional[str], Rule]:
    """(route template, rule) for a request; (None, UNLISTED) when no entry matches. Where two
    templates match, the stricter rule wins. ``/info`` finds ``/info/``, as FastAPI redirects."""
    toggled = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
    for candidate in (path, toggled):
        found = [(t, r) for t, regex, r in _BY_METHOD.get(method, ()) if regex.match(candidate)]
        if found:
            return max(found, key=lambda tr: _STRICTNESS[tr[1].role])
    if method == "HEAD":  # Starlette answers HEAD with the GET route
        return rule_for("GET", path)
    return None, UNLISTED
