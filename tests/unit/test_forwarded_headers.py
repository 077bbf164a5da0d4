"""X-Forwarded-For and -Proto are believed only from the reverse proxies the admin lists, never from
loopback by default: uvicorn's own middleware, as the server runs it, pointed at that list."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from lib.conf import Conf, ConfError
from lib.server.auth import forwarded


def client_seen(peer: str, headers: dict[str, str]) -> tuple[str, str]:
    """(client address, scheme) the app sees behind uvicorn's middleware for a request from ``peer``."""
    seen = {}

    async def app(scope, receive, send):
        seen["client"], seen["scheme"] = scope["client"][0], scope["scheme"]

    scope = {
        "type": "http", "scheme": "http", "client": (peer, 50000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(ProxyHeadersMiddleware(app)(scope, None, None))  # uvicorn's default list: 127.0.0.1
    return seen["client"], seen["scheme"]


SPOOFED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}


@pytest.fixture
def restored(monkeypatch):
    monkeypatch.setattr(ProxyHeadersMiddleware, "__call__", ProxyHeadersMiddleware.__call__)


def test_uvicorn_alone_believes_loopback(monkeypatch):
    """Why this module exists; if uvicorn changes its default, this says so."""
    monkeypatch.setattr(ProxyHeadersMiddleware, "__call__", forwarded._UVICORNS_OWN)  # as before any install
    assert client_seen("127.0.0.1", SPOOFED) == ("203.0.113.9", "https")


def test_nobody_is_believed_by_default(restored):
    assert forwarded.install(Conf({})) == []
    assert client_seen("127.0.0.1", SPOOFED) == ("127.0.0.1", "http")
    assert client_seen("10.0.0.5", SPOOFED) == ("10.0.0.5", "http")


def test_listed_proxies_are_believed(restored):
    forwarded.install(Conf({"trusted_proxies": "10.0.0.5, 192.168.7.0/24"}))
    assert client_seen("10.0.0.5", SPOOFED) == ("203.0.113.9", "https")
    assert client_seen("192.168.7.20", SPOOFED) == ("203.0.113.9", "https")
    assert client_seen("127.0.0.1", SPOOFED) == ("127.0.0.1", "http")
    assert client_seen("10.0.0.6", SPOOFED) == ("10.0.0.6", "http")


@pytest.mark.parametrize("bad", ["*", "proxy.hospital.example", "10.0.0.300", "10.0.0.0/33"])
def test_only_addresses_and_networks(bad, restored):
    with pytest.raises(ConfError, match="trusted_proxies"):
        forwarded.install(Conf({"trusted_proxies": bad}))
