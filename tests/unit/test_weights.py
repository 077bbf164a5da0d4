"""Official checkpoint locator/downloader against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "wholebody"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from lib.weights.download import OFFICIAL_WEIGHTS, OfficialWeights, ensure_weights, md5sum, weights_url  # noqa: E402

PAYLOAD = b"fake checkpoint " * 100_000  # > 1 MiB so the download loop takes several chunks
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server(tmp_path):
    """Serve a folder holding the fake file under the official high-res URL name."""
    root = tmp_path / "www"
    root.mkdir()
    (root / OFFICIAL_WEIGHTS["wholebody_highres"].url_name).write_bytes(PAYLOAD)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def fake_entry(md5: str = PAYLOAD_MD5) -> OfficialWeights:
    official = OFFICIAL_WEIGHTS["wholebody_highres"]
    return OfficialWeights(official.key, official.relative_path, official.url_name, md5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_table_matches_bundle_layout():
    assert {w.relative_path for w in OFFICIAL_WEIGHTS.values()} == {
        "wholeBody_ct_segmentation/models/model.pt",
        "wholeBody_ct_segmentation/models/model_lowres.pt",
        "spleen_ct_segmentation/models/model.pt",
        "vista3d/models/model.pt",
    }
    assert all(len(w.md5) == 32 and key == w.key for key, w in OFFICIAL_WEIGHTS.items())
    assert weights_url(OFFICIAL_WEIGHTS["spleen"]) == (
        "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/model_spleen_ct_segmentation_v1.pt"
    )
    assert weights_url(OFFICIAL_WEIGHTS["spleen"], "http://h:1/x") == "http://h:1/x/model_spleen_ct_segmentation_v1.pt"


def test_md5sum(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(PAYLOAD)
    assert md5sum(f) == PAYLOAD_MD5 == md5sum(f, chunk_size=7)


def test_download_lands_at_bundle_path(tmp_path, server):
    expected = tmp_path / "model" / "wholeBody_ct_segmentation" / "models" / "model.pt"
    expected.parent.mkdir(parents=True)
    expected.touch()  # an empty leftover is not a checkpoint
    status = ensure_weights(fake_entry(), tmp_path / "model", server)
    assert (status.present, status.source, status.path) == (True, "downloaded", expected)
    assert expected.read_bytes() == PAYLOAD
    assert list(expected.parent.iterdir()) == [expected]  # no temp file left behind

    again = ensure_weights(fake_entry(), tmp_path / "model", server)
    assert (again.present, again.source) == (True, "local")


def test_md5_mismatch_rejected(tmp_path, server):
    wrong = "0" * 32
    status = ensure_weights(fake_entry(wrong), tmp_path / "model", server)
    assert not status.present and status.source == "missing"
    assert wrong in status.message and PAYLOAD_MD5 in status.message
    assert not status.path.exists()
    assert list(status.path.parent.iterdir()) == []


def test_http_error_is_missing(tmp_path, server):
    entry = OFFICIAL_WEIGHTS["spleen"]  # not served: 404
    status = ensure_weights(entry, tmp_path, server)
    assert (status.present, status.source) == (False, "missing")
    assert "404" in status.message and str(status.path) in status.message


def test_unreachable_is_missing_quickly(tmp_path):
    start = time.monotonic()
    status = ensure_weights(fake_entry(), tmp_path, f"http://127.0.0.1:{closed_port()}/", timeout=2.0)
    assert time.monotonic() - start < 5.0
    assert (status.present, status.source) == (False, "missing")
    assert str(tmp_path / "wholeBody_ct_segmentation" / "models" / "model.pt") in status.message
    assert "untrained" in status.message
    assert not status.path.exists()


def test_download_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    status = ensure_weights(fake_entry(), tmp_path, download=False)
    assert (status.present, status.source) == (False, "missing")
    assert str(status.path) in status.message


def test_existing_file_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    path = tmp_path / "wholeBody_ct_segmentation" / "models" / "model.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"my own fine-tuned model")  # md5 differs from the official one: still accepted
    status = ensure_weights(fake_entry(), tmp_path, "http://127.0.0.1:9/")
    assert (status.present, status.source, status.path) == (True, "local", path)
    assert path.read_bytes() == b"my own fine-tuned model"


def _no_network(*args, **kwargs):
    raise AssertionError("network must not be touched")
