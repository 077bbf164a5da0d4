"""A fault of the server is answered 500 with a request id that its log line carries; every answer
carries its id; the 4xx of a bad request is unchanged."""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from lib.server import errors


def app_with_faults() -> FastAPI:
    app = FastAPI()

    @app.get("/fault")
    def fault():
        raise RuntimeError("the disk is on fire")

    @app.get("/stock-500")
    def stock_500():
        raise HTTPException(status_code=500, detail="Failed to execute infer")

    @app.get("/busy")
    def busy():
        raise HTTPException(status_code=503, detail="the inference queue is full", headers={"Retry-After": "5"})

    @app.get("/missing")
    def missing():
        raise errors.NotFoundError("unknown model 'x'")

    @app.get("/not-there")
    def not_there():
        raise errors.NotAvailableError("this server has no PACS")

    errors.install(app)
    return app


def test_a_fault_is_a_500_with_the_request_id_that_the_log_carries(caplog):
    client = TestClient(app_with_faults(), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger=errors.__name__):
        r = client.get("/fault")
    assert r.status_code == 500
    rid = r.json()["request_id"]
    assert r.headers["X-Request-ID"] == rid and rid in r.json()["detail"]
    assert "fire" not in r.text, "the answer does not show the server's internals"
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged and logged[0].exc_info and "the disk is on fire" in logged[0].getMessage()


def test_stock_500s_carry_the_request_id_too(caplog):
    client = TestClient(app_with_faults(), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger=errors.__name__):
        r = client.get("/stock-500")
    assert r.status_code == 500 and r.json()["request_id"] == r.headers["X-Request-ID"]
    assert any("Failed to execute infer" in rec.getMessage() and r.json()["request_id"] in rec.getMessage() for rec in caplog.records)


def test_a_deliberate_503_stays_what_it_is():
    r = TestClient(app_with_faults(), raise_server_exceptions=False).get("/busy")
    assert (r.status_code, r.json(), r.headers["Retry-After"]) == (503, {"detail": "the inference queue is full"}, "5")


def test_mistakes_keep_their_4xx_and_every_answer_has_an_id():
    client = TestClient(app_with_faults(), raise_server_exceptions=False)
    missing, not_there = client.get("/missing"), client.get("/not-there")
    assert (missing.status_code, missing.json()) == (404, {"detail": "unknown model 'x'"})
    assert (not_there.status_code, not_there.json()) == (409, {"detail": "this server has no PACS"})
    ids = {missing.headers["X-Request-ID"], not_there.headers["X-Request-ID"], client.get("/nowhere").headers["X-Request-ID"]}
    assert len(ids) == 3
