"""OHIF at /ohif/ in headless Chromium as the browser tests drive it: Chromium from Debian through Playwright,
offline but for the server, signed in on the server's login page, a study opened in the MONAI Label mode."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
# Chromium as root in a container, offline: no sandbox, no GPU, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
OUTPUT = ROOT / "out" / "e2e"

# {segment name: voxels} over every segmentation OHIF holds: the one the MONAI Label panel fills (id '1') and a
# stored SEG loaded for editing.
PAINTED_SEGMENTS = """() => {
  const painted = {};
  for (const segmentation of services.segmentationService.getSegmentations()) {
    const data = services.segmentationService.getLabelmapVolume(segmentation.segmentationId).voxelManager.getCompleteScalarDataArray();
    const counts = {};
    for (let i = 0; i < data.length; i++) { if (data[i]) counts[data[i]] = (counts[data[i]] || 0) + 1; }
    for (const [index, count] of Object.entries(counts)) {
      const segment = segmentation.segments[index];
      painted[segment ? segment.label : 'index ' + index] = count;
    }
  }
  return painted;
}"""


def browser_or_fail():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: run scripts/setup.sh")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run scripts/setup.sh (Debian package chromium)")
    return sync_playwright


def offline_context(browser, server_url: str):
    """A browser context that reaches nothing but the server, with the panel's server address set as a user
    would type it (OHIF also asks Google for a font)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.add_cookies([{"name": "MONAILABEL_SERVER_URL", "value": server_url + "/", "url": server_url}])
    context.route(lambda url: not url.startswith(server_url), lambda route: route.abort())
    return context


def sign_in(page, server_url: str, user: str, password: str) -> None:
    """OHIF's page sends a browser without a session to the login page, which sends it back once signed in."""
    page.goto(f"{server_url}/ohif/", wait_until="domcontentloaded")
    page.wait_for_url(f"{server_url}/login?next=*", timeout=60_000)
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server_url}/ohif/**", timeout=60_000)


def open_in_monai_label(page, patient: str, frames: int = 20) -> None:
    """From the study list: the patient's study in the MONAI Label mode, every frame loaded."""
    row = page.get_by_text(patient).first
    row.wait_for(timeout=90_000)
    if page.get_by_text("Confirm and Hide").count():
        page.get_by_text("Confirm and Hide").click()
    row.click()
    loaded = []
    page.on("response", lambda r: loaded.append(r.status) if "/frames/" in r.url else None)
    page.get_by_role("button", name="MONAI Label").click()
    page.wait_for_url("**/ohif/monai-label?StudyInstanceUIDs=*", timeout=60_000)
    wait_for_frames(page, loaded, frames)


def wait_for_frames(page, loaded: list, frames: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len([s for s in loaded if s == 200]) < frames and time.time() < deadline:
        page.wait_for_timeout(500)
    assert len([s for s in loaded if s == 200]) >= frames, loaded


def connect_panel(page):
    """The MONAI Label panel connected to the server (its /info/); returns the panel."""
    page.locator("#monailabelServerURL").wait_for(timeout=60_000)
    with page.expect_response(lambda r: r.url.endswith("/info/"), timeout=60_000):
        page.locator("button.actionButton").first.click()
    page.get_by_title("Run Segmentation", exact=True).wait_for(timeout=60_000)
    return page.locator(".monaiLabelPanel")


def nrrd_labels(data: bytes, tmp_path) -> np.ndarray:
    """The label values of an /infer answer's NRRD (what the panel asks for)."""
    import nrrd

    path = tmp_path / "ohif_result.nrrd"
    path.write_bytes(data)
    return np.unique(nrrd.read(str(path))[0])


def viewport_pixels(page) -> np.ndarray:
    from PIL import Image

    box = page.locator('[data-cy="viewport-pane"]').first.bounding_box()
    shot = page.screenshot(clip=box)
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.int16)
