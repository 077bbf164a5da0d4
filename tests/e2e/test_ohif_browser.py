"""OHIF at /ohif/ in headless Chromium: it lists the study of the PACS (Orthanc), opens it in the
MONAI Label mode, and the panel runs ``wholebody`` on it. Screenshots go to ``out/e2e/``."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import requests

from conftest import PACS_SERIES, ROOT

pytestmark = pytest.mark.e2e

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

PAINTED_SEGMENTS = """() => {
  const segmentation = services.segmentationService.getSegmentations().find(s => s.segmentationId === '1');
  const volume = services.segmentationService.getLabelmapVolume('1');
  const data = volume.voxelManager.getCompleteScalarDataArray();
  const counts = {};
  for (let i = 0; i < data.length; i++) { if (data[i]) counts[data[i]] = (counts[data[i]] || 0) + 1; }
  const painted = {};
  for (const [index, count] of Object.entries(counts)) {
    const segment = segmentation.segments[index];
    painted[segment ? segment.label : 'index ' + index] = count;
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


def viewport_pixels(page) -> np.ndarray:
    from PIL import Image
    import io

    box = page.locator('[data-cy="viewport-pane"]').first.bounding_box()
    shot = page.screenshot(clip=box)
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.int16)


def nrrd_labels(data: bytes, tmp_path) -> np.ndarray:
    import nrrd

    path = tmp_path / "ohif_result.nrrd"
    path.write_bytes(data)
    return np.unique(nrrd.read(str(path))[0])


def test_ohif_lists_the_pacs_study_and_runs_wholebody(orthanc, pacs_tools, start_server, monkeypatch, tmp_path):
    sync_playwright = browser_or_fail()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", orthanc.auth[0])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", orthanc.auth[1])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "dicomweb-cache"))
    server = start_server(conf={"highres": "false", "models": "wholebody,spleen"}, studies=orthanc.dicomweb_url)
    wholebody_labels = server.info()["models"]["wholebody"]["labels"]
    names = {int(v): k for k, v in wholebody_labels.items()}

    failures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # The panel's server address, as a user would type it.
            context.add_cookies([{"name": "MONAILABEL_SERVER_URL", "value": server.url + "/", "url": server.url}])
            # Offline: nothing but our server (OHIF asks Google for a font).
            context.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
            page = context.new_page()
            page.on(
                "response",
                lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 and "/proxy/" in r.url else None,
            )

            # 1. The study list shows the study of the PACS.
            page.goto(f"{server.url}/ohif/", wait_until="domcontentloaded")
            row = page.get_by_text("Example, CT").first
            row.wait_for(timeout=90_000)
            assert "TS-EXAMPLE" in page.inner_text("body")
            if page.get_by_text("Confirm and Hide").count():
                page.get_by_text("Confirm and Hide").click()
            page.screenshot(path=str(OUTPUT / "ohif_study_list.png"))

            # 2. The study opens in the MONAI Label mode; its 20 JPEG 2000 frames come through the proxy.
            row.click()
            frames = []
            page.on("response", lambda r: frames.append(r.status) if "/frames/" in r.url else None)
            page.get_by_role("button", name="MONAI Label").click()
            page.wait_for_url("**/ohif/monai-label?StudyInstanceUIDs=*", timeout=60_000)
            page.get_by_text("CT Body 3.0").first.wait_for(timeout=90_000)
            deadline = time.time() + 120
            while len([s for s in frames if s == 200]) < 20 and time.time() < deadline:
                page.wait_for_timeout(500)
            assert len([s for s in frames if s == 200]) >= 20 and not failures, (frames, failures)

            # 3. The MONAI Label panel connects and lists the models and their segments.
            page.locator("#monailabelServerURL").wait_for(timeout=60_000)
            with page.expect_response(lambda r: r.url.endswith("/info/"), timeout=60_000):
                page.locator("button.actionButton").first.click()
            run = page.get_by_title("Run Segmentation", exact=True)
            run.wait_for(timeout=60_000)
            panel = page.locator(".monaiLabelPanel")
            panel_text = panel.inner_text()
            assert "wholebody" in panel_text and "spleen" in panel_text, panel_text[:2000]
            page.wait_for_timeout(2000)  # the panel adds the segmentation to the viewport
            before = viewport_pixels(page)

            # 4. Run wholebody from the panel.
            started = time.time()
            with page.expect_response(lambda r: "/infer/wholebody" in r.url, timeout=600_000) as answer:
                run.click()
            assert answer.value.status == 200, answer.value.text()[:1000]
            result_values = nrrd_labels(answer.value.body(), tmp_path)
            page.get_by_text("Running Segmentation - Successful").first.wait_for(timeout=60_000)
            infer_seconds = time.time() - started
            page.wait_for_timeout(3000)
            after = viewport_pixels(page)
            page.screenshot(path=str(OUTPUT / "ohif_wholebody.png"))

            # The segments painted in OHIF are those of the result, under the model's names ...
            painted = page.evaluate(PAINTED_SEGMENTS)
            expected = {names[int(v)] for v in result_values if v}
            assert len(expected) > 5, expected
            assert set(painted) == expected, (sorted(painted), sorted(expected))
            # ... listed in the panel by name (its segment table, opened as a user would) ...
            panel.locator("label.tab-label", has_text="Class Prompts").click()
            page.get_by_text("Selected Organ(s)").first.wait_for(timeout=30_000)
            unlisted = [name for name in painted if not panel.get_by_text(name, exact=True).filter(visible=True).count()]
            assert not unlisted, unlisted
            page.screenshot(path=str(OUTPUT / "ohif_wholebody_segments.png"))
            # ... and drawn over the CT in the viewport.
            changed = np.abs(after - before).sum(axis=2) > 30
            assert changed.mean() > 0.05, f"only {changed.mean():.1%} of the viewport changed"
            print(f"OHIF: {len(painted)} segments painted, inference {infer_seconds:.0f} s; screenshots in {OUTPUT}")
        finally:
            browser.close()

    assert requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()["total"] == 1
