"""An annotator's whole session in OHIF, in headless Chromium, on Orthanc with accounts on: sign in, open the PACS
study in the MONAI Label mode, run ``wholebody``, paint a brush stroke into one structure and erase part of the
result with OHIF's own segmentation tools, and save ("Export DICOM SEG": a SEG stored through the server's proxy).
The server's final label holds exactly those changes, as its correction record shows, and Orthanc holds the SEG.
Next Sample opens the study it hands out in the same tab, held for the annotator. "Update Model" is refused to the
annotator with the server's reason; the admin starts it, sees its epochs, loss and Dice as it runs, and the new model
version was trained on the study saved from OHIF. Screenshots of each step go to ``out/e2e/``."""

from __future__ import annotations

import json
import time

import numpy as np
import pydicom
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
    sign_in,
    viewport_pixels,
)

from conftest import PACS_SERIES, correction_record, free_port, series_uids, wait_for

pytestmark = pytest.mark.e2e

ANNOTATOR, ADMIN = ("anna", "anna-password"), ("adam", "adam-password")
PAINTED = "liver"
TIMEOUT = 600


def second_study(tmp_path):
    """The shared series as another patient's study (new UIDs), so that Next Sample has a study to hand out."""
    from pydicom.uid import generate_uid

    folder = tmp_path / "second-study"
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for path in sorted(PACS_SERIES.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = "Second^CT", "TS-SECOND"
        ds.save_as(folder / path.name)
    return folder, study


@pytest.fixture
def session_server(orthanc, pacs_tools, monkeypatch, tmp_path):
    """The app on the PACS of two studies, accounts on: an annotator and an admin; wholebody (lowres, seeded random
    weights) with its trainers, two epochs a run."""
    folder, study = second_study(tmp_path)
    stored = pacs_tools.upload([PACS_SERIES, folder], orthanc.dicomweb_url, orthanc.auth)
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", orthanc.auth[0])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", orthanc.auth[1])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "dicomweb-cache"))
    add_user(tmp_path / "users.json", *ANNOTATOR, "monailabel-annotator")
    add_user(tmp_path / "users.json", *ADMIN, "monailabel-admin")
    conf = {
        "highres": "false", "models": "wholebody", "auth_users": str(tmp_path / "users.json"), "max_epochs": "2",
        "val_split": "0", "weights_url": f"http://127.0.0.1:{free_port()}/", "dicomweb_retry_s": "1",
    }
    server = AccountsServer(orthanc.dicomweb_url, tmp_path / "model", conf, tmp_path / "server.log")
    server.studies = {uid: list(series)[0] for uid, series in stored.items()}
    server.second_study = study
    yield server
    server.stop()


def bearer(server, user) -> dict:
    token = requests.post(f"{server.url}/auth/token", data={"username": user[0], "password": user[1]}, timeout=60)
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def changed(before: dict, after: dict) -> dict:
    return {name: after.get(name, 0) - before.get(name, 0) for name in set(before) | set(after) if after.get(name, 0) != before.get(name, 0)}


def drag(page, tool: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A stroke of the tool across the first viewport, in fractions of its size."""
    page.locator(f'[data-cy="{tool}"]').first.click()
    box = page.locator('[data-cy="viewport-pane"]').first.bounding_box()
    at = [(box["x"] + box["width"] * x, box["y"] + box["height"] * y) for x, y in (start, end)]
    page.mouse.move(*at[0])
    page.mouse.down()
    page.mouse.move(*at[1], steps=8)
    page.mouse.up()
    page.wait_for_timeout(1000)


def test_an_annotator_corrects_saves_and_gets_the_next_study_and_the_admin_trains(session_server, orthanc, tmp_path):
    server = session_server
    sync_playwright = browser_or_fail()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (first_study,) = [s for s in server.studies if s != server.second_study]
    image = server.studies[first_study]
    info = requests.get(f"{server.url}/info/", headers=bearer(server, ANNOTATOR), timeout=60).json()
    names = {int(v): k for k, v in info["models"]["wholebody"]["labels"].items()}
    failures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = offline_context(browser, server.url)
            page = context.new_page()
            page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 and "/proxy/" in r.url else None)

            # 1. The annotator signs in, opens the study and runs wholebody.
            sign_in(page, server.url, *ANNOTATOR)
            open_in_monai_label(page, "Example, CT")
            panel = connect_panel(page)
            page.wait_for_timeout(2000)  # the panel adds the segmentation to the viewport
            before = viewport_pixels(page)
            with page.expect_response(lambda r: "/infer/wholebody" in r.url, timeout=TIMEOUT * 1000) as answer:
                page.get_by_title("Run Segmentation", exact=True).click()
            assert answer.value.status == 200, answer.value.text()[:1000]
            page.get_by_text("Running Segmentation - Successful").first.wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            served = page.evaluate(PAINTED_SEGMENTS)
            page.screenshot(path=str(OUTPUT / "ohif_session_1_wholebody.png"))
            # The segments painted are those of the result, under the model's names, drawn over the CT ...
            expected = {names[int(v)] for v in nrrd_labels(answer.value.body(), tmp_path) if v}
            assert len(expected) > 5 and set(served) == expected, (sorted(served), sorted(expected))
            drawn = np.abs(viewport_pixels(page) - before).sum(axis=2) > 30
            assert drawn.mean() > 0.05, f"only {drawn.mean():.1%} of the viewport changed"
            # ... and listed by name in the panel's segment table, opened as a user would.
            panel.locator("label.tab-label", has_text="Class Prompts").click()
            page.get_by_text("Selected Organ(s)").first.wait_for(timeout=30_000)
            unlisted = [name for name in served if not panel.get_by_text(name, exact=True).filter(visible=True).count()]
            assert not unlisted, unlisted

            # 2. OHIF's own tools: a brush stroke into the liver, then the eraser across other structures.
            page.locator('[data-cy="panelSegmentationWithTools-btn"]').click()
            page.get_by_text(PAINTED, exact=True).first.click()
            drag(page, "Brush", (0.35, 0.5), (0.5, 0.51))
            brushed = page.evaluate(PAINTED_SEGMENTS)
            drag(page, "Eraser", (0.62, 0.45), (0.66, 0.45))
            corrected = page.evaluate(PAINTED_SEGMENTS)
            page.screenshot(path=str(OUTPUT / "ohif_session_2_corrected.png"))
            stroke, erased = changed(served, brushed), changed(brushed, corrected)
            assert stroke[PAINTED] > 0 and all(v < 0 for k, v in stroke.items() if k != PAINTED), stroke
            assert erased and all(v < 0 for v in erased.values()), erased

            # 3. Save: Export DICOM SEG, stored to the PACS through the server's proxy.
            page.locator("button[aria-haspopup=menu]").filter(visible=True).nth(1).click()
            page.get_by_text("Export & Download").click()
            page.get_by_role("menuitem", name="Export DICOM SEG").click()
            page.get_by_text("Create Report").wait_for(timeout=60_000)  # OHIF asks for the SEG's series name
            page.locator("input[type=text]").filter(visible=True).last.fill("wholebody corrected")
            with page.expect_response(lambda r: r.request.method == "POST" and "/proxy/dicom/" in r.url, timeout=120_000) as stow:
                page.get_by_role("button", name="Save").click()
            assert stow.value.status == 200, stow.value.status
            page.screenshot(path=str(OUTPUT / "ohif_session_3_saved.png"))

            # The server's final label is what the annotator saw when saving: the record names the changes exactly.
            record = correction_record(server.url, image, timeout=120, headers=bearer(server, ANNOTATOR))
            edits = {name: s["added"] - s["removed"] for name, s in record["structures"].items() if s["added"] or s["removed"]}
            assert edits == changed(served, corrected), (edits, changed(served, corrected))
            assert record["structures"][PAINTED]["added"] == stroke[PAINTED] and record["structures"][PAINTED]["removed"] == 0
            untouched = [n for n in served if n not in edits]
            assert untouched and all(record["structures"][n]["dice"] == 1.0 for n in untouched)
            listed = requests.get(f"{server.url}/datastore/", params={"output": "all"}, headers=bearer(server, ANNOTATOR), timeout=60)
            info = listed.json()["objects"][image]["labels"]["final"]["info"]
            assert info["user"] == ANNOTATOR[0] and info["Modality"] == "SEG", info
            assert info["SeriesInstanceUID"] in series_uids(orthanc, Modality="SEG")

            # 4. Next Sample hands out the other study and opens it in this tab.
            page.locator('[data-cy="monailabel-btn"]').click()
            panel = connect_panel(page)  # mounted again: it connects again
            panel.locator("label.tab-label", has_text="Active Learning").click()
            page.once("dialog", lambda dialog: dialog.accept())  # "This action will reload current page"
            with page.expect_response(lambda r: "/activelearning/" in r.url, timeout=120_000) as handed:
                panel.get_by_role("button", name="Next Sample").click()
            assert handed.value.status == 200 and handed.value.json()["StudyInstanceUID"] == server.second_study, handed.value.text()
            page.get_by_role("button", name="OK").click()
            page.wait_for_url(f"**/ohif/monai-label?StudyInstanceUIDs={server.second_study}", timeout=60_000)
            page.get_by_text("CT Body 3.0").first.wait_for(timeout=90_000)
            page.screenshot(path=str(OUTPUT / "ohif_session_4_next_sample.png"))
            handouts = json.loads((server.model_dir / "handouts.json").read_text())
            assert handouts[server.studies[server.second_study]]["client_id"] == ANNOTATOR[0], handouts

            # 5. Update Model: the annotator is refused, with the server's reason in the panel's error.
            panel = connect_panel(page)
            panel.locator("label.tab-label", has_text="Active Learning").click()
            with page.expect_response(lambda r: r.url.endswith("/train/") and r.request.method == "POST", timeout=60_000) as refused:
                panel.get_by_role("button", name="Update Model").click()
            assert refused.value.status == 403
            page.wait_for_timeout(1500)
            page.screenshot(path=str(OUTPUT / "ohif_session_5_refused.png"))
            page.get_by_text("Failed to RUN training: 403").first.wait_for(timeout=30_000)
            page.screenshot(path=str(OUTPUT / "ohif_session_5_refused.png"))
            assert "admin" in page.get_by_text("Failed to RUN training: 403").first.inner_text()
        except Exception:
            page.screenshot(path=str(OUTPUT / "ohif_session_failed.png"))
            raise
        finally:
            browser.close()

        # 6. The admin, in a browser of their own, starts training and sees it run and finish.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = offline_context(browser, server.url).new_page()
            sign_in(page, server.url, *ADMIN)
            open_in_monai_label(page, "Example, CT")
            panel = connect_panel(page)
            panel.locator("label.tab-label", has_text="Active Learning").click()
            started = time.time()
            with page.expect_response(lambda r: r.url.endswith("/train/") and r.request.method == "POST", timeout=60_000) as run:
                panel.get_by_role("button", name="Update Model").click()
            assert run.value.status == 200, run.value.text()[:1000]
            progress = panel.locator('[data-cy="training-progress"]')
            progress.filter(has_text="wholebody: epoch 1/2, loss").wait_for(timeout=TIMEOUT * 1000)
            assert "validation Dice" in progress.inner_text(), progress.inner_text()
            page.screenshot(path=str(OUTPUT / "ohif_session_6_training.png"))
            progress.filter(has_text="wholebody: epoch 2/2").filter(has_text="finished in").wait_for(timeout=TIMEOUT * 1000)
            page.screenshot(path=str(OUTPUT / "ohif_session_7_trained.png"))
            print(f"OHIF session: training seen to its end in {time.time() - started:.0f} s; screenshots in {OUTPUT}")
        finally:
            browser.close()
    assert not failures, failures

    admin = bearer(server, ADMIN)
    versions = requests.get(f"{server.url}/versions/", headers=admin, timeout=60).json()
    trained = [v for slot in versions.values() for v in slot.get("versions", []) if v.get("trainer") == "wholebody"]
    assert trained and image in trained[-1]["studies"], versions


def test_a_stored_seg_opens_with_its_segments_named_and_can_be_corrected(session_server, orthanc, tmp_path):
    """A final label saved on another workstation (a SEG the server's writer made, in the PACS): the annotator
    opens it in OHIF, sees every structure painted under its name, and corrects it with the brush."""
    from conftest import pacs_client, shared_series_with_label
    from lib.pacs.seg import write_seg

    server = session_server
    # The app's OHIF configuration, to signed-in users only.
    assert requests.get(f"{server.url}/ohif/app-config.js", timeout=60).status_code == 401
    config = requests.get(f"{server.url}/ohif/app-config.js", headers=bearer(server, ANNOTATOR), timeout=60)
    assert config.status_code == 200 and "panelSegmentationWithTools" in config.text
    files, _, frames, names = shared_series_with_label()
    write_seg(files, frames, names, str(tmp_path / "final.dcm"))
    pacs_client(orthanc).store_instances([pydicom.dcmread(tmp_path / "final.dcm")])
    expected = {names[v]: int((frames == v).sum()) for v in names}

    sync_playwright = browser_or_fail()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = offline_context(browser, server.url).new_page()
            sign_in(page, server.url, *ANNOTATOR)
            open_in_monai_label(page, "Example, CT")
            page.locator('[data-cy="studyBrowser-panel"]').get_by_text("SEG", exact=True).dblclick()
            # Shown as a preview in the view it was opened in (OHIF's MPR protocol would put it in all three, and
            # the two that cannot show it break the brush); LOAD puts it on the CT as a segmentation the tools edit.
            preview = page.get_by_text("LOAD", exact=True)
            preview.first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            assert preview.count() == 1, f"the SEG is previewed in {preview.count()} views"
            preview.click()
            loaded = wait_for(lambda: page.evaluate(PAINTED_SEGMENTS) == expected, timeout=120)
            assert loaded, changed(expected, page.evaluate(PAINTED_SEGMENTS))
            page.locator('[data-cy="panelSegmentationWithTools-btn"]').click()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(OUTPUT / "ohif_stored_seg.png"))
            listed = [name for name in expected if page.get_by_text(name, exact=True).count()]
            assert len(listed) > len(expected) // 2, listed  # the segment table (scrolled to its first rows)

            # The correction starts from the stored label: the brush paints into it.
            page.get_by_text(sorted(expected)[0], exact=True).first.click()
            drag(page, "Brush", (0.35, 0.5), (0.5, 0.51))
            painted = changed(expected, page.evaluate(PAINTED_SEGMENTS))
            assert painted.get(sorted(expected)[0], 0) > 0, painted
        finally:
            browser.close()
