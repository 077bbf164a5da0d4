"""The DICOMweb proxy's URL builder: only DICOMweb resources under the configured root reach the PACS,
whatever the encoding of a dot segment (raw, percent-encoded once, twice, three times, mixed case,
with a segment parameter), and each operation keeps its method."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from lib.pacs import proxy
from lib.pacs.proxy import ProxyPathError, upstream_url

ROOT = "http://127.0.0.1:8042/dicom-web"


@pytest.fixture(autouse=True)
def pacs(monkeypatch):
    monkeypatch.setattr("monailabel.config.settings.MONAI_LABEL_STUDIES", ROOT + "/")
    for prefix in ("QIDO", "WADO", "STOW"):
        monkeypatch.setattr(f"monailabel.config.settings.MONAI_LABEL_{prefix}_PREFIX", None)


@pytest.mark.parametrize(
    "op, path, url",
    [
        ("qido", "studies", f"{ROOT}/studies"),
        ("qido", "studies/1.2.3/series", f"{ROOT}/studies/1.2.3/series"),
        ("wado", "studies/1.2/series/1.3/instances/1.4/frames/1,2", f"{ROOT}/studies/1.2/series/1.3/instances/1.4/frames/1,2"),
        ("wado", "studies/1.2/series/1.3/metadata", f"{ROOT}/studies/1.2/series/1.3/metadata"),
        ("stow", "studies", f"{ROOT}/studies"),
        ("", "series", f"{ROOT}/series"),
        # what is not a separator is sent encoded: the PACS reads the same segments as the check did
        ("qido", "studies/1.2?x=1", f"{ROOT}/studies/1.2%3Fx=1"),
        ("qido", "studies/1.2#x", f"{ROOT}/studies/1.2%23x"),
    ],
)
def test_dicomweb_paths_are_forwarded(op, path, url):
    assert upstream_url(op, path) == url


ESCAPES = [
    "../../patients",  # /proxy/dicom/..%2F..%2Fpatients, as the router decodes it
    "../../system",
    "studies/../../tools/shutdown",
    "studies/1.2/../../../tools/execute-script",
    "%2e%2e/%2e%2e/instances",
    "%2E%2E/%2E%2e/system",
    "%252e%252e/%252e%252e/system",  # encoded twice
    "%25252e%25252e/system",  # three times
    "studies/..%2F..%2Fpatients",
    "studies/%2e%2e%2f%2e%2e%2fpatients",
    "studies/%252e%252e%252fpatients",
    ".",
    "./studies",
    "studies/./1.2",
    "..;/system",  # '..' to servers that read ';' as a segment parameter
    "studies/...",
    "studies\\..\\..\\system",
    "studies%5c..%5csystem",
    "studies//1.2",
    "/studies",
    "studies/",
    "studies/1.2%00",
    "servers/peer/stow",  # Orthanc's DICOMweb client, beside the standard's resources
    "patients",
    "tools/shutdown",
    "%2525252e%2525252e/system",  # more encodings than are decoded
]


@pytest.mark.parametrize("path", ESCAPES)
@pytest.mark.parametrize("op", ["qido", "wado", "stow", ""])
def test_nothing_leaves_the_dicomweb_root(op, path):
    with pytest.raises(ProxyPathError):
        upstream_url(op, path)


def test_prefixes_are_roots_too(monkeypatch):
    monkeypatch.setattr("monailabel.config.settings.MONAI_LABEL_QIDO_PREFIX", "rs")
    assert upstream_url("qido", "studies") == f"{ROOT}/rs/studies"
    with pytest.raises(ProxyPathError):
        upstream_url("qido", "../studies")


@pytest.mark.parametrize("op, method", [("qido", "POST"), ("stow", "GET"), ("", "POST"), ("qido", "PUT"), ("wado", "PUT")])
def test_each_operation_has_its_method(op, method):
    with pytest.raises(HTTPException) as refused:
        proxy.forward(op, "studies", method, {}, "", b"")
    assert refused.value.status_code == 405 and refused.value.headers["Allow"] in ("GET", "POST", "GET, POST")


@pytest.mark.parametrize("op", ["wado", "stow"])
@pytest.mark.parametrize("path", ["studies", "studies/1.2.840.1"])
def test_a_post_is_stow_rs_to_the_stow_root(monkeypatch, op, path):
    """OHIF 3.10 stores a SEG with its WADO-RS client (POST /proxy/dicom/wado/studies): STOW-RS, to the STOW root."""
    monkeypatch.setattr("monailabel.config.settings.MONAI_LABEL_STOW_PREFIX", "stow-rs")
    sent = []

    class Answer:
        status_code, headers, content, text = 200, {}, b"{}", "{}"

    monkeypatch.setattr(proxy.requests, "request", lambda method, url, **kw: sent.append((method, url)) or Answer())
    assert proxy.forward(op, path, "POST", {}, "", b"dicom").status_code == 200
    assert sent == [("POST", f"{ROOT}/stow-rs/{path}")]


@pytest.mark.parametrize("op, path, status", [
    ("wado", "studies/1.2/series/1.3", 405),  # a WADO-RS resource is read, never written
    ("wado", "series", 405),
    ("stow", "studies/1.2/series/1.3", 400),  # STOW-RS stores to studies[/{study}] only
    ("stow", "instances", 400),
])
def test_a_post_elsewhere_is_refused_before_any_request(monkeypatch, op, path, status):
    monkeypatch.setattr(proxy.requests, "request", lambda *a, **k: pytest.fail("the PACS was asked"))
    with pytest.raises(HTTPException) as refused:
        proxy.forward(op, path, "POST", {}, "", b"dicom")
    assert refused.value.status_code == status and "studies/{StudyInstanceUID}" in refused.value.detail


def test_an_escape_is_a_400_before_any_request(monkeypatch):
    monkeypatch.setattr(proxy.requests, "request", lambda *a, **k: pytest.fail("the PACS was asked"))
    with pytest.raises(HTTPException) as refused:
        proxy.forward("qido", "../../patients", "GET", {}, "", None)
    assert refused.value.status_code == 400 and "DICOMweb root" in refused.value.detail
