"""OHIF at /ohif/ in headless Chromium with accounts on: the browser is sent to the login page, signs
in (a session cookie), lists the study of the PACS (Orthanc) through the proxy, opens it in the
MONAI Label mode; the panel places a VISTA3D click with OHIF's point tool on ``vista3d_point`` and the
clicked structure is painted. (``wholebody`` in OHIF: test_ohif_session.py.) Screenshots go to ``out/e2e/``."""

from __future__ import annotations

import json
import re

import pytest
import requests
from accounts import AccountsServer, add_user
from ohif import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OUTPUT,
    PAINTED_SEGMENTS,
    browser_or_fail,
    connect_panel,
    nrrd_labels,
    offline_context,
    open_in_monai_label,
)

from conftest import PACS_SERIES, free_port

pytestmark = pytest.mark.e2e


USER, PASSWORD = "radiologist", "radiologist-password"
CLICKED_SEGMENT = "hepatic tumor"  # a VISTA3D class that wholebody does not have


@pytest.fixture
def server(orthanc, pacs_tools, monkeypatch, tmp_path):
    """The app on the PACS with accounts on: wholebody (lowres) and VISTA3D (seeded random weights,
    official layout); one annotator."""
    import torch
    from monai.networks.nets import vista3d132

    pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", orthanc.auth[0])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", orthanc.auth[1])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "dicomweb-cache"))
    official = tmp_path / "model" / "vista3d" / "models" / "model.pt"
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(vista3d132(in_channels=1).state_dict(), official)
    add_user(tmp_path / "users.json", USER, PASSWORD, "monailabel-annotator")
    conf = {
        "highres": "false", "models": "wholebody,vista3d", "skip_trainers": "true", "auth_users": str(tmp_path / "users.json"),
        "weights_url": f"http://127.0.0.1:{free_port()}/",
    }
    server = AccountsServer(orthanc.dicomweb_url, tmp_path / "model", conf, tmp_path / "server.log")
    yield server
    server.stop()


def infer_params(request) -> dict:
    """The params JSON of the panel's multipart /infer request."""
    found = re.search(rb'name="params"\r\n\r\n(.*?)\r\n--', request.post_data_buffer, re.S)
    return json.loads(found.group(1))


def test_ohif_with_accounts_and_a_vista3d_click(server, orthanc, tmp_path):
    sync_playwright = browser_or_fail()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    token = requests.post(f"{server.url}/auth/token", data={"username": USER, "password": PASSWORD}, timeout=60).json()["access_token"]

    failures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = offline_context(browser, server.url)
            page = context.new_page()
            page.on(
                "response",
                lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 and "/proxy/" in r.url else None,
            )

            # 0. Not signed in: the PACS proxy is closed and OHIF's page sends the browser to sign in.
            assert context.request.get(f"{server.url}/proxy/dicom/qido/studies").status == 401
            page.goto(f"{server.url}/ohif/", wait_until="domcontentloaded")
            assert page.url == f"{server.url}/login?next=%2Fohif%2F"
            page.fill("#username", USER)
            page.fill("#password", "wrong password")
            page.click("button[type=submit]")
            page.get_by_text("wrong username or password").wait_for(timeout=30_000)
            page.fill("#username", USER)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server.url}/ohif/**", timeout=60_000)
            (session,) = [c for c in context.cookies() if c["name"] == "monailabel_session"]
            assert session["httpOnly"] and session["sameSite"] == "Strict"
            assert context.request.get(f"{server.url}/proxy/dicom/qido/studies").status == 200

            # 1. The study list shows the study of the PACS.
            row = page.get_by_text("Example, CT").first
            row.wait_for(timeout=90_000)
            assert "TS-EXAMPLE" in page.inner_text("body")
            page.screenshot(path=str(OUTPUT / "ohif_study_list.png"))

            # 2. The study opens in the MONAI Label mode; its 20 JPEG 2000 frames come through the proxy.
            open_in_monai_label(page, "Example, CT")
            page.get_by_text("CT Body 3.0").first.wait_for(timeout=90_000)
            assert not failures, failures

            # 3. The MONAI Label panel connects and lists the models and their segments.
            panel = connect_panel(page)
            panel_text = panel.inner_text()
            assert "wholebody" in panel_text and "vista3d" in panel_text, panel_text[:2000]
            page.wait_for_timeout(2000)  # the panel adds the segmentation to the viewport

            # 4. A VISTA3D click: the Point Prompts tab, a segment, OHIF's point tool on the viewport, Run.
            point_tab = panel.locator("div.tab", has=page.locator("label.tab-label", has_text="Point Prompts"))
            point_tab.locator("label.tab-label").click()
            assert point_tab.locator("select.selectBox").input_value() == "vista3d_point"
            point_tab.locator("tr.clickable-row", has_text=CLICKED_SEGMENT).click()
            box = page.locator('[data-cy="viewport-pane"]').first.bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.55)
            page.wait_for_timeout(500)
            with page.expect_response(lambda r: "/infer/vista3d_point" in r.url, timeout=600_000) as answer:
                page.get_by_title("Run PointPrompts", exact=True).click()
            assert answer.value.status == 200, answer.value.text()[:1000]
            clicks = infer_params(answer.value.request)
            assert len(clicks["foreground"]) == 1 and len(clicks["foreground"][0]) == 3, clicks
            click_values = nrrd_labels(answer.value.body(), tmp_path)
            page.get_by_text("Running Inference for Point Prompts - Successful").first.wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(OUTPUT / "ohif_vista3d_click.png"))
            painted = page.evaluate(PAINTED_SEGMENTS)
            assert set(click_values) == {0, 1}, click_values  # the clicked structure, as a new one (value 1)
            assert set(painted) == {CLICKED_SEGMENT} and painted[CLICKED_SEGMENT] > 0, painted
            print(f"OHIF: VISTA3D click painted {painted[CLICKED_SEGMENT]} voxels; screenshots in {OUTPUT}")
        finally:
            browser.close()

    signed_in = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{server.url}/datastore/", params={"output": "stats"}, headers=signed_in, timeout=60).json()["total"] == 1
    audit = [json.loads(line) for line in (server.model_dir / "audit.jsonl").read_text().splitlines()]
    assert [(r["event"], r["user"]) for r in audit if r["event"].startswith("login")] == [
        ("login", USER), ("login_failed", USER), ("login", USER)
    ]
    for log in (server.log, server.model_dir / "audit.jsonl"):
        text = log.read_text()
        assert orthanc.auth[1] not in text and PASSWORD not in text and token not in text, f"a secret in {log}"
