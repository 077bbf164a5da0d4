"""Built-in accounts on a real server, driven by the 3D Slicer module's own client: anonymous
requests refused, an annotator infers and saves, cannot train, an admin trains; forged, expired
and unsigned tokens refused; CORS; login throttling; the audit log; and a server exposed
without accounts that refuses to start."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid

import jwt
import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
import torch
from accounts import AccountsServer, SlicerLogin, add_user

from conftest import APP, CT, free_port, slicer_client_class, wait_for_training
from lib.networks import wholebody_segresnet

pytestmark = pytest.mark.e2e

SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}
LOWRES = "wholeBody_ct_segmentation/models/model_lowres.pt"
USERS = {
    "anna": ("anna-password", "monailabel-annotator"),
    "otto": ("otto-password", "monailabel-annotator"),
    "uma": ("uma-password", "monailabel-user"),
    "adam": ("adam-password", "monailabel-admin"),
}
VIEWER = "http://viewer.hospital.example:3000"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("accounts")


@pytest.fixture(scope="module")
def server(root):
    studies, model_dir = root / "studies", root / "model"
    studies.mkdir()
    ct = nib.load(CT)
    for name, crop in {"crop1": ct.slicer[20:84, 20:84, :], "crop2": ct.slicer[40:104, 30:94, :]}.items():
        nib.save(crop, studies / f"{name}.nii.gz")
    official = model_dir / LOWRES
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(wholebody_segresnet().state_dict(), official)  # seeded random weights, official layout
    users_file = root / "etc" / "users.json"
    for name, (password, role) in USERS.items():
        add_user(users_file, name, password, role)
    conf = {
        # Inference with wholebody (lowres); the admin trains spleen, the lighter network.
        "models": "wholebody,spleen", "highres": "false", "al_mc_samples": "2", "al_roi": "48",
        "auth_users": str(users_file), "cors_origins": VIEWER,
        "login_max_failures": "3", "login_max_failures_per_address": "6", "login_delay_seconds": "0.25",
        "weights_url": f"http://127.0.0.1:{free_port()}/",
    }
    server = AccountsServer(studies, model_dir, conf, root / "server.log")
    yield server
    server.stop()


def audit(server) -> list[dict]:
    return [json.loads(line) for line in (server.model_dir / "audit.jsonl").read_text().splitlines()]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def status_of(call) -> int:
    try:
        call()
    except Exception as e:  # MONAILabelClientException: the status as a field, or only in the message (infer)
        return e.status_code or int(re.search(r"Status: (\d+)", e.msg).group(1))
    return 200


def test_slicer_session_with_accounts(server, root):
    tmp = str(root)
    anonymous = slicer_client_class()(server.url, tmp)
    assert anonymous.auth_enabled()
    assert status_of(anonymous.info) == 401
    assert status_of(lambda: anonymous.infer("wholebody", "crop1", SLICER)) == 401
    assert status_of(lambda: anonymous.next_sample("random", {})) == 401
    assert status_of(lambda: anonymous.train_start("wholebody", {})) == 401
    for method, path in [("GET", "/datastore/?output=all"), ("PUT", "/datastore/label?image=crop1"), ("DELETE", "/datastore/image?id=crop1")]:
        answer = requests.request(method, server.url + path, timeout=30)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer", (method, path)

    anna = SlicerLogin(server.url, tmp, "anna", USERS["anna"][0])
    otto = SlicerLogin(server.url, tmp, "otto", USERS["otto"][0])
    assert anna().info()["models"]["wholebody"]["labels"]["liver"] == 5

    # Both Slicers send the default client id "user-xyz"; hand-outs follow the signed-in user.
    first = anna().next_sample("random", {})["id"]
    second = otto().next_sample("random", {})["id"]
    assert {first, second} == {"crop1", "crop2"}
    held = json.loads((server.model_dir / "handouts.json").read_text())
    assert {i: h["client_id"] for i, h in held.items()} == {first: "anna", second: "otto"}

    result_file, params = anna().infer("wholebody", first, SLICER)
    result, header = nrrd.read(result_file)
    assert result.shape == (64, 64, 30) and params["label_names"]["liver"] == 5
    corrected = np.zeros_like(result)
    corrected[10:40, 10:40, 5:25] = 5
    corrected[40:60, 40:60, 10:20] = 1
    label_file = root / "corrected.nrrd"
    nrrd.write(str(label_file), corrected, header)
    # The client claims to be someone else: the label names who signed in.
    segments = [{"name": "spleen", "idx": 1}, {"name": "liver", "idx": 5}]
    anna().save_label(first, str(label_file), params={"label_info": segments, "user": "adam"})
    info = requests.get(f"{server.url}/datastore/label/info", params={"label": first, "tag": "final"}, headers=bearer(anna.token["access_token"]), timeout=30)
    assert info.json()["user"] == "anna"

    assert status_of(lambda: anna().train_start("spleen", {"max_epochs": 1})) == 403
    assert status_of(lambda: SlicerLogin(server.url, tmp, "uma", USERS["uma"][0])().save_label(first, str(label_file))) == 403
    deleted = requests.delete(f"{server.url}/datastore/label", params={"id": first, "tag": "final"}, headers=bearer(anna.token["access_token"]), timeout=30)
    assert deleted.status_code == 403 and "monailabel-reviewer" in deleted.json()["detail"]

    adam = SlicerLogin(server.url, tmp, "adam", USERS["adam"][0])
    adam().train_start("spleen", {"max_epochs": 1, "val_split": 0.0})
    assert wait_for_training(adam())["status"] == "DONE"
    assert anna.sign_ins == 1 and otto.sign_ins == 1  # one sign-in per session, the token reused

    events = [(r["event"], r["user"], r.get("status")) for r in audit(server) if r["event"] != "server_start"]
    assert events == [
        ("login", "anna", None),
        ("next_sample", "anna", 200),
        ("login", "otto", None),
        ("next_sample", "otto", 200),
        ("save_label", "anna", 200),
        ("denied", "anna", 403),
        ("login", "uma", None),
        ("denied", "uma", 403),
        ("denied", "anna", 403),
        ("login", "adam", None),
        ("train", "adam", 200),
    ], events
    saved = next(r for r in audit(server) if r["event"] == "save_label")
    assert saved["query"] == {"image": first} and saved["address"] == "127.0.0.1" and saved["path"] == "/datastore/label"


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_forged_expired_and_unsigned_tokens(server, root):
    key = (server.model_dir / "auth_token.key").read_bytes().strip()
    assert oct(os.stat(server.model_dir / "auth_token.key").st_mode & 0o777) == "0o600"
    good = requests.post(f"{server.url}/auth/token", data={"username": "anna", "password": USERS["anna"][0]}, timeout=30).json()["access_token"]
    claims = jwt.decode(good, key, algorithms=["HS256"], issuer="monailabel-wholebody")
    header, _, signature = good.split(".")
    now = int(time.time())
    forged = {
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, key, algorithm="HS256"),
        "tampered": f"{header}.{b64({**claims, 'sub': 'adam'})}.{signature}",
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({**claims, 'sub': 'adam'})}.",
        "other key": jwt.encode({**claims, "sub": "adam"}, b"x" * 48, algorithm="HS256"),
    }
    for what, token in forged.items():
        answer = requests.post(f"{server.url}/train/wholebody", json={}, headers=bearer(token), timeout=30)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer"), (what, answer.text)
    assert "expired" in requests.get(f"{server.url}/info/", headers=bearer(forged["expired"]), timeout=30).json()["detail"]
    assert requests.get(f"{server.url}/info/", headers=bearer(good), timeout=30).status_code == 200

    # Slicer holding an expired token signs in again by itself.
    slicer = SlicerLogin(server.url, str(root), "anna", USERS["anna"][0])
    slicer.token = {"access_token": forged["expired"], "token_type": "bearer"}
    assert slicer().info()["models"]["wholebody"] and slicer.sign_ins == 1


def test_cors(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = requests.options(f"{server.url}/infer/wholebody", headers={"Origin": VIEWER, **preflight}, timeout=30)
    assert allowed.status_code == 200 and allowed.headers["Access-Control-Allow-Origin"] == VIEWER
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    foreign = requests.options(f"{server.url}/infer/wholebody", headers={"Origin": "https://evil.example", **preflight}, timeout=30)
    assert foreign.status_code == 400 and "Access-Control-Allow-Origin" not in foreign.headers
    token = requests.post(f"{server.url}/auth/token", data={"username": "uma", "password": USERS["uma"][0]}, timeout=30).json()["access_token"]
    read = requests.get(f"{server.url}/info/", headers={"Origin": "https://evil.example", **bearer(token)}, cookies={"c": "1"}, timeout=30)
    assert read.status_code == 200 and "Access-Control-Allow-Origin" not in read.headers
    write = requests.post(f"{server.url}/activelearning/random", json={}, headers={"Origin": "https://evil.example", **bearer(token)}, timeout=30)
    assert write.status_code == 403 and "not allowed" in write.json()["detail"]


def label_bytes(server, token: str, image: str, tag: str) -> bytes:
    answer = requests.get(f"{server.url}/datastore/label", params={"label": image, "tag": tag}, headers=bearer(token), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.content


def label_info(server, token: str, image: str, tag: str) -> dict:
    return requests.get(f"{server.url}/datastore/label/info", params={"label": image, "tag": tag}, headers=bearer(token), timeout=30).json()


def test_only_annotators_save_through_infer(server, root):
    """A read-only user's /infer with save_label replaced another annotator's final label, unaudited."""
    anna, uma = SlicerLogin(server.url, str(root), "anna", USERS["anna"][0]), SlicerLogin(server.url, str(root), "uma", USERS["uma"][0])
    crop = nib.load(server.studies / "crop2.nii.gz")
    painted = np.zeros(crop.shape, np.uint8)
    painted[10:30, 10:30, 5:15] = 1
    nib.save(nib.Nifti1Image(painted, crop.affine), root / "anna_final.nii.gz")
    anna().save_label("crop2", str(root / "anna_final.nii.gz"), params={"label_info": [{"name": "spleen", "idx": 1}]})
    anna_token = anna.token["access_token"]
    before = label_bytes(server, anna_token, "crop2", "final")

    assert status_of(lambda: uma().infer("spleen", "crop2", {**SLICER, "save_label": True, "label_tag": "final"})) == 403
    assert label_bytes(server, anna_token, "crop2", "final") == before
    assert label_info(server, anna_token, "crop2", "final")["user"] == "anna"
    denied = audit(server)[-1]
    assert (denied["event"], denied["user"], denied["status"], denied["path"]) == ("denied", "uma", 403, "/infer/spleen")

    # An annotator may: the result saved under its tag, attributed, and the hand-out of the study ends.
    nib.save(crop, root / "crop3.nii.gz")
    anna().upload_image(str(root / "crop3.nii.gz"), "crop3")
    sample = anna().next_sample("random", {})
    assert sample["id"] == "crop3" and "path" not in sample and str(server.studies) not in json.dumps(sample)
    assert "crop3" in json.loads((server.model_dir / "handouts.json").read_text())
    anna().infer("spleen", "crop3", {**SLICER, "save_label": True, "label_tag": "spleen_draft"})
    saved = label_info(server, anna_token, "crop3", "spleen_draft")
    assert saved["user"] == "anna" and saved["model"] == "spleen"
    assert "crop3" not in json.loads((server.model_dir / "handouts.json").read_text())
    event = audit(server)[-1]
    assert (event["event"], event["user"], event["status"], event["path"]) == ("save_label", "anna", 200, "/infer/spleen")


def test_info_updates_name_who_made_them(server, root):
    """The routes in front of the stock ones recorded "admin" for everyone."""
    otto = requests.post(f"{server.url}/auth/token", data={"username": "otto", "password": USERS["otto"][0]}, timeout=30).json()["access_token"]
    # a forged X-Forwarded-For from loopback changes nothing in the audit log either
    spoofed = {**bearer(otto), "X-Forwarded-For": "203.0.113.9"}
    answer = requests.put(f"{server.url}/datastore/image/info", params={"image": "crop1"}, data={"info": json.dumps({"note": "contrast"})}, headers=spoofed, timeout=30)
    assert answer.status_code == 200, answer.text
    info = requests.get(f"{server.url}/datastore/image/info", params={"image": "crop1"}, headers=bearer(otto), timeout=30).json()
    assert info["user"] == "otto" and info["note"] == "contrast"
    assert "path" not in info and str(server.studies) not in json.dumps(info)  # no server paths
    update = next(r for r in reversed(audit(server)) if r["event"] == "update_image_info")
    assert update["user"] == "otto" and update["address"] == "127.0.0.1"
    assert "by otto" in server.log.read_text() and "Update Image Info: crop1 by admin" not in server.log.read_text()


def test_sessions_belong_to_their_creator(server, root):
    uma, otto = SlicerLogin(server.url, str(root), "uma", USERS["uma"][0]), SlicerLogin(server.url, str(root), "otto", USERS["otto"][0])
    nib.save(nib.load(server.studies / "crop1.nii.gz"), root / "own.nii.gz")
    created = uma().create_session(str(root / "own.nii.gz"))
    session_id = created["session_id"]
    assert uuid.UUID(session_id).version == 4  # random, not uuid1's time and MAC address
    assert str(root) not in json.dumps(created) and "path" not in created["session_info"]
    shown = uma().get_session(session_id)
    assert shown["name"] == session_id and "image" not in shown and str(server.model_dir) not in json.dumps(shown)

    assert status_of(lambda: otto().get_session(session_id)) == 404
    assert status_of(lambda: otto().infer("spleen", "", SLICER, session_id=session_id)) == 404
    assert status_of(lambda: otto().remove_session(session_id)) == 404
    image = requests.get(f"{server.url}/session/{session_id}", params={"image": "true"}, headers=bearer(otto.token["access_token"]), timeout=30)
    assert image.status_code == 404

    result_file, params = uma().infer("spleen", "", SLICER, session_id=session_id)
    assert nrrd.read(result_file)[0].shape == (64, 64, 30) and params["label_names"] == {"spleen": 1}
    uma().remove_session(session_id)
    assert status_of(lambda: uma().get_session(session_id)) == 404


def test_queue_shows_users_their_own_requests(server):
    def queue_as(name: str) -> dict:
        token = requests.post(f"{server.url}/auth/token", data={"username": name, "password": USERS[name][0]}, timeout=30).json()["access_token"]
        return requests.get(f"{server.url}/queue/", headers=bearer(token), timeout=30).json()

    assert {"others_running", "others_waiting"} <= set(queue_as("uma"))
    assert "others_running" not in queue_as("adam")


def test_signing_out_ends_the_token(server):
    token = requests.post(f"{server.url}/auth/token", data={"username": "uma", "password": USERS["uma"][0]}, timeout=30).json()["access_token"]
    assert requests.get(f"{server.url}/info/", headers=bearer(token), timeout=30).status_code == 200
    assert requests.post(f"{server.url}/logout", headers=bearer(token), allow_redirects=False, timeout=30).status_code == 303
    after = requests.get(f"{server.url}/info/", headers=bearer(token), timeout=30)
    assert after.status_code == 401 and "signed out" in after.json()["detail"]


def test_model_versions_and_report_roles(server):
    token = {n: requests.post(f"{server.url}/auth/token", data={"username": n, "password": USERS[n][0]}, timeout=30).json()["access_token"] for n in ("anna", "adam")}
    assert requests.get(f"{server.url}/versions/", headers=bearer(token["anna"]), timeout=30).status_code == 200
    for method in ("put", "delete"):
        path = "pin/1" if method == "put" else "pin"
        refused = requests.request(method, f"{server.url}/versions/wholebody_lowres/{path}", headers=bearer(token["anna"]), timeout=30)
        assert refused.status_code == 403, (method, refused.text)
    assert requests.get(f"{server.url}/corrections/report", headers=bearer(token["anna"]), timeout=30).status_code == 403
    # The admin passes the role check and is told why nothing was pinned; the attempt is in the audit log.
    answer = requests.put(f"{server.url}/versions/wholebody_lowres/pin/1", headers=bearer(token["adam"]), timeout=30)
    assert answer.status_code == 404 and "has no version 1" in answer.json()["detail"]
    assert ("pin_version", "adam") in [(r["event"], r["user"]) for r in audit(server)]
    report = requests.get(f"{server.url}/corrections/report", headers=bearer(token["adam"]), timeout=30)
    assert report.status_code == 200 and isinstance(report.json(), dict)


def test_login_throttling(server):
    """Last in the module: it uses up this address's failed sign-ins."""
    before = len(audit(server))

    def sign_in(name: str, password: str) -> tuple[requests.Response, float]:
        start = time.time()
        answer = requests.post(f"{server.url}/auth/token", data={"username": name, "password": password, "grant_type": "password"}, timeout=60)
        return answer, time.time() - start

    answers = [sign_in("uma", f"guess-{i}") for i in range(3)]
    assert [a.status_code for a, _ in answers] == [401, 401, 401]
    # Each failure is answered no sooner than its delay: 0.25, 0.5, 1 s.
    assert all(took >= 0.25 * 2**i for i, (_, took) in enumerate(answers)), [t for _, t in answers]
    refused, _ = sign_in("uma", USERS["uma"][0])  # the right password, refused all the same
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "too many failed sign-ins" in refused.json()["detail"]

    # Per address: three more names fail from here, and then nobody signs in from this address.
    assert [sign_in(name, "guess")[0].status_code for name in ("mallory", "trudy", "eve")] == [401, 401, 401]
    assert sign_in("adam", USERS["adam"][0])[0].status_code == 429

    events = [(r["event"], r["user"]) for r in audit(server)[before:]]
    assert events == [("login_failed", "uma")] * 3 + [("login_refused", "uma")] + [
        ("login_failed", "mallory"), ("login_failed", "trudy"), ("login_failed", "eve"), ("login_refused", "adam")
    ]
    log = (server.model_dir / "audit.jsonl").read_text()
    assert not any(password in log for password, _ in USERS.values()) and "guess" not in log


def test_exposed_server_without_accounts_refuses_to_start(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    args = [
        "monailabel", "start_server", "--app", str(APP), "--studies", str(studies), "--host", "0.0.0.0", "--port", str(free_port()),
        "--conf", "models", "spleen", "--conf", "model_dir", str(tmp_path / "model"), "--conf", "weights_url", f"http://127.0.0.1:{free_port()}/",
    ]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, start_new_session=True)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "refusing to start: the server listens on 0.0.0.0" in output
    assert "--conf auth_users FILE" in output and "--conf auth none" in output
    assert "Uvicorn running" not in output
