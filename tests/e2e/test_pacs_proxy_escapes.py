"""OHIF's proxy to the PACS on a real server with accounts, against a stand-in PACS that records every
request it receives: the escapes from the DICOMweb root that reached Orthanc's REST API and its
administration (``..%2F..%2Fpatients``, ``../../system``, ``%2e%2e``, ``tools/shutdown``,
``tools/execute-script``, encoded twice) are refused, and nothing outside the DICOMweb root ever arrives,
while OHIF's own reads still go through."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from accounts import AccountsServer, add_user

pytestmark = pytest.mark.e2e

ROOT = "/dicom-web"
USERS = {"uma": ("uma-password", "monailabel-user"), "anna": ("anna-password", "monailabel-annotator")}


class StandInPacs(BaseHTTPRequestHandler):
    """Answers any DICOMweb search with no results and records (method, path as received, authorization)."""

    received: list[tuple[str, str, str]] = []

    def _answer(self, body: bytes):
        self.received.append((self.command, self.path, self.headers.get("Authorization", "")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(b"[]")

    def do_POST(self):
        self._answer(b"{}")

    do_PUT = do_DELETE = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def pacs():
    StandInPacs.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInPacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}{ROOT}"
    server.shutdown()


def raw(server, method: str, path: str, token: str) -> tuple[int, str]:
    """A request sent exactly as written (``requests`` would resolve the dot segments before sending)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request(method, path, body=b"{}" if method == "POST" else None, headers={"Authorization": f"Bearer {token}"})
    answer = connection.getresponse()
    body = answer.read().decode(errors="replace")
    connection.close()
    return answer.status, body


ESCAPES = [
    ("uma", "GET", "/proxy/dicom/..%2F..%2Fpatients"),
    ("uma", "GET", "/proxy/dicom/../../system"),
    ("uma", "GET", "/proxy/dicom/wado/%2e%2e/%2e%2e/instances"),
    ("uma", "GET", "/proxy/dicom/qido/%252e%252e/%252e%252e/patients"),
    ("anna", "POST", "/proxy/dicom/stow/..%2F..%2Ftools%2Fshutdown"),
    ("anna", "POST", "/proxy/dicom/..%2F..%2Ftools%2Fexecute-script"),
    ("anna", "POST", "/proxy/dicom/stow/studies/..%2F..%2F..%2Ftools%2Fexecute-script"),
    ("uma", "GET", "/proxy/dicom/qido/servers"),
    ("anna", "POST", "/proxy/dicom/qido/studies"),  # QIDO is read with GET only
]


def test_nothing_but_dicomweb_reaches_the_pacs(tmp_path, monkeypatch, pacs):
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", "radiology")
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", "pacs-password")
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "cache"))
    users_file = tmp_path / "users.json"
    for name, (password, role) in USERS.items():
        add_user(users_file, name, password, role)
    conf = {"models": "spleen", "skip_trainers": "true", "auth_users": str(users_file), "weights_url": "http://127.0.0.1:9/"}
    server = AccountsServer(pacs, tmp_path / "model", conf, tmp_path / "server.log")
    try:
        tokens = {
            name: requests.post(f"{server.url}/auth/token", data={"username": name, "password": password}, timeout=60).json()["access_token"]
            for name, (password, _) in USERS.items()
        }
        for name, method, path in ESCAPES:
            status, body = raw(server, method, path, tokens[name])
            assert status in (400, 405), (name, method, path, status, body)
            assert "not forwarded" in json.loads(body)["detail"], (path, body)

        # OHIF's reads and an annotator's store still go through, with the PACS credentials.
        before = len(StandInPacs.received)
        assert raw(server, "GET", "/proxy/dicom/qido/studies?limit=1", tokens["uma"])[0] == 200
        assert raw(server, "POST", "/proxy/dicom/stow/studies", tokens["anna"])[0] == 200
        assert [(m, p) for m, p, _ in StandInPacs.received[before:]] == [("GET", f"{ROOT}/studies?limit=1"), ("POST", f"{ROOT}/studies")]
    finally:
        server.stop()

    received = StandInPacs.received
    assert received, "the stand-in PACS recorded nothing: the check below would pass vacuously"
    outside = [(m, p) for m, p, _ in received if not p.startswith(f"{ROOT}/") or ".." in p or "%2e" in p.lower()]
    assert not outside, outside
    assert {p.split("?")[0].split("/")[2] for _, p, _ in received} <= {"studies", "series", "instances"}
    assert all(a.startswith("Basic ") for _, _, a in received)
