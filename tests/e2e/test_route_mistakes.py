"""Every route of a running server, sent its typical mistakes: never a 500.

The routes are those of the running app (``--conf models spleen``, no PACS; the login routes on a
second one with accounts): its OpenAPI schema (stock MONAI Label's routes and the app's own, as
served) and the access rules' table (``lib/server/auth/rules.py``), which also lists the routes
the schema hides (mounts, the DICOMweb proxy, login, deprecated ones) and which
``tests/unit/test_auth_rules.py`` proves equal to the app's route table. Each route must have an entry
in ``MISTAKES`` below: a route added without one fails ``test_every_route_is_walked``.

Each mistake (an unknown path parameter, a missing body, file or query parameter, a body of the wrong
content type) must get the 4xx it names, with a ``detail`` naming the problem; a part the server was
not started with (a PACS, a GPU, whole-slide models) gets 409 saying what to configure. Every answer
carries an ``X-Request-ID``. Also here: uploads and ``/infer`` with files named by their Series
Instance UID, as PACS exports name them, and ``random`` asked twice in one second.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests

from accounts import AccountsServer, add_user
from conftest import APP, CT, Server, free_port

pytestmark = pytest.mark.e2e

TIMEOUT = 120
UID = "1.2.826.0.1.3680043.8.498.7"  # a Series Instance UID, as PACS exports and anonymisers name files
NO_SESSION = "00000000-0000-0000-0000-000000000000"
CROP = (slice(40, 80), slice(30, 70), slice(10, 20))  # 40x40x10 of the shared CT: air, fat, organs


@dataclass(frozen=True)
class Mistake:
    what: str
    path: str  # as sent
    status: int
    words: tuple[str, ...] = ()  # in the answer's detail
    send: dict = field(default_factory=dict)  # requests' keyword arguments
    accounts: bool = False  # sent to the server with accounts (login routes exist only there)


JUNK = {"data": "this is not what the route takes", "headers": {"content-type": "text/plain"}}
NOT_JSON = {"data": "{not json", "headers": {"content-type": "application/json"}}


def unknown(path: str, what: str = "model") -> Mistake:
    return Mistake(f"unknown {what}", path, 404, ("nosuch",))


def not_served(path: str, words: tuple[str, ...], send: dict | None = None) -> Mistake:
    return Mistake("a part the server was not started with", path, 409, words, send or {})


def signed_out(what: str, path: str, status: int, words: tuple[str, ...] = (), send: dict | None = None) -> Mistake:
    """Login routes exist only where accounts are on (``--conf auth_users``): sent to that server, without a token."""
    return Mistake(what, path, status, words, send or {}, accounts=True)


WRONG_PASSWORD = {"data": {"username": "anna", "password": "not her password"}}


PROXY = {f"/proxy/dicom/{op}{{path:path}}": f"/proxy/dicom/{op}studies" for op in ("wado/", "qido/", "stow/", "")}

MISTAKES: dict[tuple[str, str], list[Mistake]] = {
    ("GET", "/auth/"): [signed_out("a body", "/auth/", 200, send=JUNK), Mistake("without accounts", "/auth/", 404)],
    ("POST", "/auth/token"): [
        signed_out("missing form", "/auth/token", 422),
        signed_out("wrong password", "/auth/token", 401, ("wrong username or password",), WRONG_PASSWORD),
    ],
    ("GET", "/auth/token/valid"): [signed_out("no token", "/auth/token/valid", 401)],
    ("GET", "/login"): [signed_out("a body", "/login?next=https://elsewhere.example/", 200, send=JUNK)],
    ("POST", "/login"): [signed_out("wrong password", "/login", 401, send=WRONG_PASSWORD)],
    ("GET", "/logout"): [signed_out("not signed in", "/logout", 303)],
    ("POST", "/logout"): [signed_out("not signed in", "/logout", 303, send=JUNK)],
    # Pages without inputs: a body they do not take is ignored.
    ("GET", "/favicon.ico"): [Mistake("a body", "/favicon.ico", 200, send=JUNK)],
    ("GET", "/"): [Mistake("a body", "/", 200, send=JUNK)],
    ("GET", "/openapi.json"): [Mistake("a body", "/openapi.json", 200, send=JUNK)],
    ("GET", "/docs"): [Mistake("a body", "/docs", 200, send=JUNK)],
    ("GET", "/info/"): [Mistake("a body", "/info/", 200, send=JUNK)],
    ("GET", "/queue/"): [Mistake("a body", "/queue/", 200, send=JUNK)],
    ("GET", "/static/{path:path}"): [Mistake("unknown file", "/static/nosuch.js", 404)],
    ("GET", "/ohif/{path:path}"): [Mistake("unknown file (OHIF's page answers)", "/ohif/nosuch", 200)],
    ("POST", "/infer/{model}"): [
        Mistake("unknown model", "/infer/nosuch?image=ct", 404, ("nosuch",)),
        Mistake("no image", "/infer/spleen", 422, ("no image", "image", "file", "session_id")),
        Mistake("no image, wrong content type", "/infer/spleen", 422, ("no image",), JUNK),
        Mistake("missing file (params only)", "/infer/spleen", 422, ("no image",), {"files": {"params": (None, "{}")}}),
        Mistake("unknown image", "/infer/spleen?image=nosuch", 404, ("nosuch",)),
        Mistake("unknown session", f"/infer/spleen?session_id={NO_SESSION}", 404, ("session", NO_SESSION)),
        Mistake("params not JSON", "/infer/spleen?image=ct", 400, ("json",), {"files": {"params": (None, "{not json")}}),
    ],
    ("POST", "/infer/wsi/{model}"): [not_served("/infer/wsi/spleen?image=ct", ("whole-slide",)), not_served("/infer/wsi/nosuch", ("whole-slide",))],
    ("POST", "/infer/wsi_v2/{model}"): [not_served("/infer/wsi_v2/spleen?image=ct", ("whole-slide",), JUNK)],
    ("POST", "/activelearning/{strategy}"): [
        Mistake("unknown strategy", "/activelearning/nosuch", 404, ("nosuch", "random")),
        Mistake("wrong content type", "/activelearning/random", 422, send=JUNK),
        Mistake("body not JSON", "/activelearning/random", 422, send=NOT_JSON),
    ],
    ("GET", "/train/"): [Mistake("query not a boolean", "/train/?all=maybe", 422)],
    ("GET", "/scoring/"): [Mistake("query not a boolean", "/scoring/?all=maybe", 422)],
    ("GET", "/batch/infer"): [Mistake("query not a boolean", "/batch/infer?all=maybe", 422)],
    ("GET", "/heads/{model}"): [unknown("/heads/nosuch")],
    ("GET", "/datastore/"): [Mistake("unknown output", "/datastore/?output=nosuch", 422)],
    ("GET", "/datastore/image"): [Mistake("missing image", "/datastore/image", 422), Mistake("unknown image", "/datastore/image?image=nosuch", 404)],
    ("HEAD", "/datastore/image"): [Mistake("unknown image", "/datastore/image?image=nosuch", 404)],
    ("GET", "/datastore/image/info"): [Mistake("missing image", "/datastore/image/info", 422), unknown("/datastore/image/info?image=nosuch", "image")],
    ("GET", "/datastore/label"): [Mistake("missing label", "/datastore/label?tag=final", 422), unknown("/datastore/label?label=nosuch&tag=final", "image")],
    ("HEAD", "/datastore/label"): [Mistake("unknown image", "/datastore/label?image=nosuch&tag=final", 404)],
    ("GET", "/datastore/label/info"): [unknown("/datastore/label/info?label=nosuch&tag=final", "image")],
    ("PUT", "/session/"): [Mistake("missing file", "/session/", 422), Mistake("wrong content type", "/session/", 422, send=JUNK)],
    ("GET", "/session/{session_id}"): [
        Mistake("unknown session", f"/session/{NO_SESSION}", 404, (NO_SESSION,)),
        Mistake("not a session id", "/session/nosuch", 400, ("session id",)),
    ],
    ("DELETE", "/session/{session_id}"): [Mistake("unknown session", f"/session/{NO_SESSION}", 404, (NO_SESSION,))],
    ("PUT", "/datastore/"): [Mistake("missing file", "/datastore/?image=x", 422), Mistake("wrong content type", "/datastore/", 422, send=JUNK)],
    ("PUT", "/datastore/image"): [
        Mistake("missing file", "/datastore/image?image=x", 422),
        Mistake("not an image", "/datastore/image", 422, ("unsupported image format", ".txt"), {"files": {"file": ("notes.txt", b"notes")}}),
        Mistake("hand-out record in another shape", "/datastore/image?image=x", 422, ("'strategy'",),
                {"files": {"params": (None, '{"strategy": []}'), "file": ("x.nii.gz", b"x")}}),
    ],
    ("PUT", "/datastore/image/info"): [
        unknown("/datastore/image/info?image=nosuch", "image"),
        Mistake("info not JSON", "/datastore/image/info?image=ct", 400, ("json",), {"data": {"info": "{not json"}}),
        Mistake("hand-out record in another shape", "/datastore/image/info?image=ct", 422, ("'strategy'", "hand-outs"), {"data": {"info": '{"strategy": "x"}'}}),
    ],
    ("PUT", "/datastore/label"): [
        Mistake("missing label file", "/datastore/label?image=ct", 422),
        Mistake("unknown image", "/datastore/label?image=nosuch", 404, ("nosuch",), {"files": {"label": ("l.nii.gz", b"x")}}),
    ],
    ("PUT", "/datastore/label/info"): [unknown("/datastore/label/info?label=nosuch&tag=final", "image")],
    ("PUT", "/datastore/updatelabelinfo"): [unknown("/datastore/updatelabelinfo?label=nosuch&tag=final", "image")],
    ("DELETE", "/datastore/label"): [Mistake("missing id", "/datastore/label?tag=final", 422), unknown("/datastore/label?id=nosuch&tag=final", "image")],
    ("DELETE", "/datastore/"): [Mistake("missing id", "/datastore/", 422), unknown("/datastore/?id=nosuch", "image")],
    ("DELETE", "/datastore/image"): [unknown("/datastore/image?id=nosuch", "image")],
    ("GET", "/datastore/dataset"): [
        Mistake("nothing labelled yet", "/datastore/dataset", 409, ("no study has a final label",)),
        Mistake("limit not a number", "/datastore/dataset?limit_cases=many", 422),
    ],
    ("POST", "/train/"): [Mistake("wrong content type", "/train/", 422, send=JUNK)],
    ("POST", "/train/{model}"): [unknown("/train/nosuch"), Mistake("wrong content type", "/train/spleen", 422, send=JUNK)],
    ("DELETE", "/train/"): [Mistake("nothing running", "/train/", 200, send=JUNK)],
    ("POST", "/scoring/"): [Mistake("wrong content type", "/scoring/", 422, send=JUNK)],
    ("POST", "/scoring/{method}"): [unknown("/scoring/nosuch", "scoring method")],
    ("DELETE", "/scoring/"): [Mistake("nothing running", "/scoring/", 200, send=JUNK)],
    ("POST", "/batch/infer/{model}"): [unknown("/batch/infer/nosuch"), Mistake("wrong content type", "/batch/infer/spleen", 422, send=JUNK)],
    ("DELETE", "/batch/infer"): [Mistake("nothing running", "/batch/infer", 200, send=JUNK)],
    ("DELETE", "/heads/{model}/{head}"): [unknown("/heads/nosuch/liver"), Mistake("unknown head", "/heads/spleen/nosuch", 404, ("spleen", "no decoder heads"))],
    ("GET", "/versions/"): [Mistake("a body", "/versions/", 200, send=JUNK)],
    ("GET", "/versions/{slot}"): [unknown("/versions/nosuch", "model versions")],
    ("PUT", "/versions/{slot}/pin/{version}"): [
        unknown("/versions/nosuch/pin/1", "model versions"),
        Mistake("version not a number", "/versions/spleen/pin/one", 422),
        Mistake("unknown version", "/versions/spleen/pin/99", 404, ("no version 99",)),
    ],
    ("DELETE", "/versions/{slot}/pin"): [unknown("/versions/nosuch/pin", "model versions")],
    ("DELETE", "/versions/{slot}/{version}"): [
        unknown("/versions/nosuch/1", "model versions"),
        Mistake("unknown version", "/versions/spleen/99", 404, ("no version 99",)),
    ],
    ("GET", "/corrections/report"): [Mistake("a body", "/corrections/report", 200, send=JUNK)],
    ("GET", "/corrections/report.html"): [Mistake("a body", "/corrections/report.html", 200, send=JUNK)],
    ("GET", "/model/{model}"): [unknown("/model/nosuch")],
    ("GET", "/model/info/{model}"): [unknown("/model/info/nosuch")],
    ("PUT", "/model/{model}"): [
        Mistake("unknown model", "/model/nosuch", 404, ("nosuch", "spleen"), {"files": {"file": ("model.pt", b"x")}}),
        Mistake("missing file", "/model/spleen", 422),
    ],
    ("DELETE", "/model/{model}"): [unknown("/model/nosuch")],
    ("GET", "/logs/"): [Mistake("lines not a number", "/logs/?lines=many", 422)],
    ("GET", "/logs/gpu"): [
        not_served("/logs/gpu", ("GPU", "nvidia-smi")) if shutil.which("nvidia-smi") is None else Mistake("a body", "/logs/gpu", 200, send=JUNK)
    ],
    ("POST", "/reload"): [not_served("/reload", ("restart the server",))],
    **{("GET", t): [not_served(p, ("no PACS", "--studies"))] for t, p in PROXY.items()},
    **{("POST", t): [not_served(p, ("no PACS", "--studies"), JUNK)] for t, p in PROXY.items()},
}


def _cases():
    for (method, template), mistakes in MISTAKES.items():
        for mistake in mistakes:
            yield pytest.param(method, mistake, id=f"{method} {template}: {mistake.what}")


# ----------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("route_mistakes")


@pytest.fixture(scope="module")
def crop(root) -> nib.Nifti1Image:
    image = nib.load(str(CT)).slicer[CROP]
    return nib.Nifti1Image(np.asarray(image.dataobj), image.affine)


@pytest.fixture(scope="module")
def server(root, crop):
    studies = root / "studies"
    studies.mkdir()
    nib.save(crop, str(studies / "ct.nii.gz"))
    (root / "sessions").mkdir()
    conf = {"models": "spleen", "weights_url": f"http://127.0.0.1:{free_port()}/"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONAI_LABEL_SESSION_PATH", str(root / "sessions"))
        s = Server(studies, root / "model", conf, root / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def accounts_server(root, crop):
    """The same app with built-in accounts, for the login routes."""
    studies, users = root / "studies_accounts", root / "users.json"
    studies.mkdir()
    nib.save(crop, str(studies / "ct.nii.gz"))
    add_user(users, "anna", "her-password-1", "monailabel-annotator")
    conf = {"models": "spleen", "skip_trainers": "true", "auth_users": str(users), "login_delay_seconds": "0",
            "weights_url": f"http://127.0.0.1:{free_port()}/"}
    s = AccountsServer(studies, root / "model_accounts", conf, root / "server_accounts.log")
    yield s
    s.stop()


def served_routes(server: Server) -> set[tuple[str, str]]:
    """The running app's routes: its OpenAPI schema, and the access rules' table for those the schema hides."""
    sys.path.insert(0, str(APP))
    from lib.server.auth.rules import RULES

    schema = requests.get(f"{server.url}/openapi.json", timeout=TIMEOUT).json()
    documented = {(method.upper(), path) for path, operations in schema["paths"].items() for method in operations}
    assert documented >= {("POST", "/infer/{model}"), ("GET", "/queue/"), ("GET", "/heads/{model}")}, documented
    return documented | set(RULES)


# ----------------------------------------------------------------------------- tests


def test_every_route_is_walked(server):
    routes = served_routes(server)
    missing = sorted(routes - set(MISTAKES))
    assert not missing, f"routes without their typical mistakes in MISTAKES: {missing}"
    stale = sorted(set(MISTAKES) - routes)
    assert not stale, f"MISTAKES for routes the server does not have: {stale}"
    assert all(MISTAKES.values()), "every route is sent at least one mistake"


@pytest.mark.parametrize("method, mistake", list(_cases()))
def test_mistake_gets_its_4xx_never_a_500(request, method, mistake):
    server = request.getfixturevalue("accounts_server" if mistake.accounts else "server")
    r = requests.request(method, f"{server.url}{mistake.path}", timeout=TIMEOUT, allow_redirects=False, **mistake.send)
    assert r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    assert r.status_code == mistake.status, f"{r.status_code}: {r.text[:500]}"
    assert r.headers.get("X-Request-ID"), dict(r.headers)
    if 400 <= r.status_code and method != "HEAD" and r.headers["content-type"] == "application/json":
        detail = str(r.json()["detail"])
        for word in mistake.words:
            assert word.lower() in detail.lower(), f"{word!r} not in {detail!r}"


# ----------------------------------------------------------------------------- random, asked twice in one second


def test_random_asked_again_in_the_same_second(server):
    """Stock ``random`` weighs a study handed out this second 0: when all do, it answered 500."""
    answers = [
        requests.post(f"{server.url}/activelearning/random", json={"client_id": "anna"}, timeout=TIMEOUT) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text[:300] for a in answers]
    assert all(a.json().get("id") for a in answers)


# ----------------------------------------------------------------------------- files named by their UID


def nrrd_file(path: Path, image: nib.Nifti1Image) -> Path:
    """The crop as an NRRD in LPS, as Slicer writes it."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3, :3]
    origin = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3, 3]
    header = {"space": "left-posterior-superior", "space directions": lps.T, "space origin": origin, "encoding": "gzip"}
    nrrd.write(str(path), np.asarray(image.dataobj).astype(np.int16), header)
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_upload_named_by_uid_is_stored_under_its_uid_in_its_format(server, crop, tmp_path, suffix):
    uid = f"{UID}{len(suffix)}"
    path = tmp_path / f"{uid}{suffix}"
    if suffix == ".nrrd":
        nrrd_file(path, crop)
    else:
        nib.save(crop, str(path))
    with open(path, "rb") as f:  # no image id: the file's name gives it
        r = requests.put(f"{server.url}/datastore/", files={"file": (path.name, f)}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["image"] == uid
    stored = server.studies / f"{uid}{suffix}"
    assert stored.read_bytes() == path.read_bytes()
    assert requests.head(f"{server.url}/datastore/image", params={"image": uid}, timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_infer_on_a_file_named_by_uid(server, crop, tmp_path, suffix):
    path = tmp_path / f"{UID}{suffix}"
    if suffix == ".nrrd":
        nrrd_file(path, crop)
    else:
        nib.save(crop, str(path))
    with open(path, "rb") as f:
        r = requests.post(
            f"{server.url}/infer/spleen",
            params={"output": "image"},
            files={"params": (None, '{"result_extension": ".nii.gz"}'), "file": (path.name, f)},
            timeout=TIMEOUT,
        )
    assert r.status_code == 200, r.text[:500]
    label = tmp_path / "label.nii.gz"
    label.write_bytes(r.content)
    assert nib.load(str(label)).shape == crop.shape


def test_no_answer_was_a_500(server, accounts_server):
    for log in (server.log.read_text(), accounts_server.log.read_text()):
        assert "500 Internal" not in log
        assert "internal server error (request id" not in log
