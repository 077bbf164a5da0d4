"""A SEG that a viewer stores in the PACS through the server's DICOMweb proxy (OHIF's "store segmentation")
becomes the study's final label at once, attributed to the signed-in user who stored it, and gets the same
correction record as a save from 3D Slicer: against the prediction the server served for the study."""

from __future__ import annotations

import json
import time

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from accounts import AccountsServer, add_user

from conftest import PACS_SERIES, correction_record, free_port, series_uids

pytestmark = pytest.mark.e2e

TIMEOUT = 600


def test_a_seg_stored_through_the_proxy_is_the_final_label_with_its_correction_record(orthanc, pacs_tools, monkeypatch, tmp_path):
    from dicomweb_client.api import DICOMwebClient
    from requests_toolbelt.multipart import decoder

    from lib.pacs.seg import write_seg

    stored = pacs_tools.upload([PACS_SERIES], orthanc.dicomweb_url, orthanc.auth)
    ((_, (series_uid,)),) = ((k, tuple(v)) for k, v in stored.items())
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", orthanc.auth[0])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", orthanc.auth[1])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "dicomweb-cache"))
    users_file = tmp_path / "users.json"
    add_user(users_file, "anna", "anna-password", "monailabel-annotator")
    add_user(users_file, "uma", "uma-password", "monailabel-user")
    conf = {
        "highres": "false", "models": "wholebody", "skip_trainers": "true", "auth_users": str(users_file),
        "weights_url": f"http://127.0.0.1:{free_port()}/", "dicomweb_retry_s": "1",
    }
    server = AccountsServer(orthanc.dicomweb_url, tmp_path / "model", conf, tmp_path / "server.log")
    try:
        token = requests.post(f"{server.url}/auth/token", data={"username": "anna", "password": "anna-password"}, timeout=60)
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

        # The prediction anna starts from (kept by the server as what it served).
        answered = time.time()
        r = requests.post(
            f"{server.url}/infer/wholebody", params={"image": series_uid, "output": "all"},
            files={"params": (None, json.dumps({"highres": False}))}, headers=headers, timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text[:1000]
        parts = {b"params" in p.headers.get(b"Content-Disposition", b""): p.content
                 for p in decoder.MultipartDecoder(r.content, r.headers["content-type"]).parts}
        names = json.loads(parts[True])["label_names"]
        (tmp_path / "served.nii.gz").write_bytes(parts[False])
        served = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "served.nii.gz")))
        by_value = {v: k for k, v in names.items()}
        counts = {int(v): int((served == v).sum()) for v in np.unique(served) if v}
        # Two structures changed, the others left: the biggest repainted as the smallest in the first five slices.
        erased, painted = sorted(counts, key=counts.get)[-1], sorted(counts, key=counts.get)[0]
        final = served.copy()
        repainted = final[:5] == erased
        final[:5][repainted] = painted
        assert repainted.sum(), "the change must touch the structure"

        # The viewer writes the SEG on the series' instances (frames in the series' slice order) and stores it.
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(PACS_SERIES))
        write_seg(files, final, {v: by_value[v] for v in counts}, str(tmp_path / "seg.dcm"))
        seg = pydicom.dcmread(tmp_path / "seg.dcm")
        seg.Manufacturer, seg.ManufacturerModelName = "OHIF", "OHIF Viewer"  # any viewer's SEG, not this app's own
        del seg.ContentCreatorName
        def viewer(auth: dict) -> DICOMwebClient:
            return DICOMwebClient(f"{server.url}/proxy/dicom", qido_url_prefix="qido", wado_url_prefix="wado",
                                  stow_url_prefix="stow", headers=auth)

        # A user who may only read is refused the store (and so the import): nothing reaches the PACS.
        uma = requests.post(f"{server.url}/auth/token", data={"username": "uma", "password": "uma-password"}, timeout=60)
        with pytest.raises(requests.HTTPError) as refused:
            viewer({"Authorization": f"Bearer {uma.json()['access_token']}"}).store_instances([seg])
        assert refused.value.response.status_code == 403 and series_uids(orthanc, Modality="SEG") == []
        viewer(headers).store_instances([seg])
        stored_at = time.time()
        assert series_uids(orthanc, Modality="SEG") == [str(seg.SeriesInstanceUID)]

        # The server imports it as the final label without a training run, and records the correction.
        record = correction_record(server.url, series_uid, timeout=120, headers=headers)
        assert record, f"no correction record: {server.log.read_text()[-3000:]}"
        assert record["model"] == "wholebody" and record["annotator"] == "anna"
        assert record["edited"] == sorted([by_value[erased], by_value[painted]])
        assert record["accepted"] == sorted(by_value[v] for v in counts if v not in (erased, painted))
        changed = {by_value[erased]: (int(repainted.sum()), 0), by_value[painted]: (0, int(repainted.sum()))}
        assert {n: (record["structures"][n]["removed"], record["structures"][n]["added"]) for n in changed} == changed
        # Seconds from the answer to when the SEG was made (its own date), within the test's own timing.
        assert 0 < record["seconds"] <= stored_at - answered, record
        info = requests.get(f"{server.url}/datastore/label/info", params={"label": series_uid, "tag": "final"},
                            headers=headers, timeout=60).json()
        assert info["SeriesInstanceUID"] == str(seg.SeriesInstanceUID) and info["user"] == "anna", info
        # Stored from the PACS, not sent back to it: still the one SEG.
        time.sleep(2)
        assert series_uids(orthanc, Modality="SEG") == [str(seg.SeriesInstanceUID)]
    finally:
        server.stop()
