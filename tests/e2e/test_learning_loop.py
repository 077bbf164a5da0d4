"""The learning loop through the 3D Slicer module's own client: what each correction cost against the
prediction served, model versions made by training (pin, unpin, restart, broken files), and the report."""

from __future__ import annotations

import time

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests

from conftest import CT, Server, correction_record, free_port, slicer_client_class, wait_for_training

pytestmark = pytest.mark.e2e

SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}
STUDIES = ("crop1", "crop2", "crop3", "crop4")
SLOT = "wholebody_lowres"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    (root / "studies").mkdir()
    ct = nib.load(str(CT))
    # 96x96x30 at 3 mm: one window of the lowres model per inference.
    for n, name in enumerate(STUDIES):
        nib.save(ct.slicer[13 + 4 * n : 109 + 4 * n, 3 : 99, :], str(root / "studies" / f"{name}.nii.gz"))
    return root


def start(root, log: str) -> Server:
    conf = {"models": "wholebody", "highres": "false", "weights_url": f"http://127.0.0.1:{free_port()}/"}
    return Server(root / "studies", root / "model", conf, root / log)


@pytest.fixture(scope="module")
def server(root):
    servers = [start(root, "server0.log")]
    yield servers  # a test may restart it: the last one is the live one
    for s in servers:
        s.stop()


def correct(client, study: str, tmp: str) -> tuple[np.ndarray, dict]:
    """Infer, then what an annotator does in Slicer: half of the largest structure erased, the second
    largest deleted, the rest left; saved with Slicer's own numbering (its list positions) and names.
    Returns the served label and the expected edits {name: removed voxels}."""
    result_file, params = client.infer("wholebody", study, SLICER)
    served, header = nrrd.read(result_file)
    by_value = {v: k for k, v in params["label_names"].items()}
    values, counts = np.unique(served[served > 0], return_counts=True)
    assert len(values) >= 3, "the test needs a prediction of at least three structures"
    a, b = values[np.argsort(-counts)][:2]
    final = served.copy()
    half = np.flatnonzero(served == a)[: int(counts[values == a][0]) // 2]
    final.flat[half] = 0
    final[served == b] = 0
    present = sorted(set(np.unique(final).tolist()) - {0})
    slicer = np.zeros_like(final)
    for position, value in enumerate(present, start=1):
        slicer[final == value] = position
    label_file = f"{tmp}/{study}_final.nrrd"
    nrrd.write(label_file, slicer, header)
    info = [{"name": by_value[v], "idx": p} for p, v in enumerate(present, start=1)]
    client.save_label(study, label_file, params={"label_info": info})
    return served, {by_value[a]: len(half), by_value[b]: int(counts[values == b][0])}


def check_record(record: dict, served: np.ndarray, by_value: dict, edits: dict) -> None:
    served_names = {by_value[v] for v in np.unique(served).tolist() if v}
    assert record["edited"] == sorted(edits), record
    assert record["accepted"] == sorted(served_names - set(edits)) and record["missed"] == []
    for name, removed in edits.items():
        entry = record["structures"][name]
        assert (entry["removed"], entry["added"]) == (removed, 0), (name, entry)
    assert record["voxels_changed"] == sum(edits.values())


def test_slicer_session_records_what_was_corrected(server, root, tmp_path):
    url = server[-1].url
    client = slicer_client_class()(url, tmpdir=str(tmp_path))
    names = client.info()["models"]["wholebody"]["labels"]
    by_value = {v: k for k, v in names.items()}

    served, edits = correct(client, "crop1", str(tmp_path))
    record = correction_record(url, "crop1")
    check_record(record, served, by_value, edits)
    assert record["model"] == "wholebody" and record["version"] is None  # untrained: no weights file
    original = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]["crop1"]["labels"]["original_wholebody"]
    assert original["info"]["model"] == "wholebody" and original["info"]["served_at"] <= record["saved_at"]

    # A hand-out (Next Sample), a pause, then inference and a save: seconds count from the hand-out.
    before = time.time()
    study = client.next_sample("first", {})["id"]
    time.sleep(1.5)
    served, edits = correct(client, study, str(tmp_path))
    record = correction_record(url, study)
    after = time.time()
    check_record(record, served, by_value, edits)
    assert 1.5 <= record["seconds"] <= after - before
    assert record["started"] < record["served_at"]


def train(client) -> None:
    client.train_start("wholebody", {"max_epochs": 1, "highres": False, "val_split": 0.0})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status


def labels(client, study: str) -> tuple[np.ndarray, object]:
    result_file, params = client.infer("wholebody", study, SLICER)
    return nrrd.read(result_file)[0], params.get("model_version")


def test_versions_pin_unpin_restart_and_report(server, root, tmp_path):
    url = server[-1].url
    client = slicer_client_class()(url, tmpdir=str(tmp_path))
    by_value = {v: k for k, v in client.info()["models"]["wholebody"]["labels"].items()}

    train(client)
    first, version = labels(client, "crop3")
    assert version == 1
    train(client)
    second, version = labels(client, "crop3")
    assert version == 2 and (second != first).any(), "version 2 must answer other labels than version 1"
    listed = requests.get(f"{url}/versions/{SLOT}", timeout=30).json()
    assert (listed["serving"], listed["pinned"]) == (2, None)
    assert [v["parent"] for v in listed["versions"]] == [None, 1] and listed["versions"][1]["studies"] == ["crop1", "crop2"]

    # Roll back: version 1 answers again; corrections made now are version 1's.
    assert requests.put(f"{url}/versions/{SLOT}/pin/1", timeout=60).status_code == 200
    again, version = labels(client, "crop3")
    assert version == 1 and np.array_equal(again, first)
    expected = {}
    for study in ("crop3", "crop4"):
        served, edits = correct(client, study, str(tmp_path))
        expected[study] = (served, edits)

    # A restart keeps the pin.
    server[-1].stop()
    server.append(start(root, "server1.log"))
    url = server[-1].url
    client = slicer_client_class()(url, tmpdir=str(tmp_path))
    weights = client.info()["models"]["wholebody"]["weights"]["lowres"]
    assert weights["version"] == {"serving": 1, "pinned": 1}, weights
    assert np.array_equal(labels(client, "crop3")[0], first)

    assert requests.delete(f"{url}/versions/{SLOT}/pin", timeout=60).status_code == 200
    again, version = labels(client, "crop3")
    assert version == 2 and np.array_equal(again, second)
    for study in ("crop1", "crop2"):
        served, edits = correct(client, study, str(tmp_path))
        expected[study] = (served, edits)

    # A broken version file is refused with a message; version 2 keeps serving.
    (root / "model" / "versions" / SLOT / "1" / "model.pt").write_bytes(b"not a checkpoint")
    refused = requests.put(f"{url}/versions/{SLOT}/pin/1", timeout=60)
    assert refused.status_code == 422 and "version 1 of wholebody_lowres cannot be loaded" in refused.json()["detail"]
    assert str(root) not in refused.json()["detail"]  # the file named inside the versions folder, not its server path
    assert requests.put(f"{url}/versions/{SLOT}/pin/9", timeout=60).status_code == 404
    assert np.array_equal(labels(client, "crop3")[0], second)

    # The report: two versions, two corrected studies each, values from the edits made above.
    for study, (served, edits) in expected.items():
        check_record(correction_record(url, study), served, by_value, edits)
    report = requests.get(f"{url}/corrections/report", timeout=30).json()["wholebody"]
    for version, studies in (("1", ["crop3", "crop4"]), ("2", ["crop1", "crop2"])):
        assert report[version]["studies"] == studies
        changed = [sum(expected[s][1].values()) for s in studies]
        assert report[version]["median_voxels_changed"] == float(np.median(changed))
        served_counts = [len(set(np.unique(expected[s][0]).tolist()) - {0}) for s in studies]
        assert report[version]["accepted_share"] == round((sum(served_counts) - 4) / sum(served_counts), 4)
    page = requests.get(f"{url}/corrections/report.html", timeout=30)
    assert page.status_code == 200 and "<h2>wholebody</h2>" in page.text
