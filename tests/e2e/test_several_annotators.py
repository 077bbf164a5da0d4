"""Several annotators on one server: light requests answer while an inference runs, a burst of inferences
is bounded by the queue (503 + Retry-After), and concurrent label saves lose nothing.

One server for the module: ``wholebody`` only, one inference worker, two requests may wait. The slow
request is a ``wholebody`` highres inference on the shared CT (1.5 mm, six 96^3 windows: seconds to
minutes on two cores); every assertion is about the order of events and counts, never about seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import CT, Server, free_port, slicer_client_class

pytestmark = pytest.mark.e2e

PHANTOMS = [f"p{i}" for i in range(10)]
PHANTOM_SHAPE = (24, 20, 12)
CROP = (slice(40, 72), slice(20, 52), slice(None))  # 32x32x30 voxels of the shared CT: a quick lowres inference
SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("annotators")


@pytest.fixture(scope="module")
def server(root):
    from lib.phantom import write_phantom

    studies = root / "studies"
    studies.mkdir()
    shutil.copy(CT, studies / "ct.nii.gz")
    image = nib.load(str(CT))
    nib.save(image.slicer[CROP], str(studies / "crop.nii.gz"))
    for i, name in enumerate(PHANTOMS):
        write_phantom(studies / f"{name}.nii.gz", shape=PHANTOM_SHAPE, seed=i)
    conf = {"models": "wholebody", "infer_workers": "1", "infer_queue": "2", "weights_url": f"http://127.0.0.1:{free_port()}/"}
    s = Server(studies, root / "model", conf, root / "server.log")
    yield s
    s.stop()


def client(server: Server, root: Path, client_id: str):
    return slicer_client_class()(server.url, tmpdir=str(root), client_id=client_id)


def post_infer(server: Server, image: str, params: dict) -> requests.Response:
    return requests.post(f"{server.url}/infer/wholebody", params={"image": image}, data={"params": json.dumps({**SLICER, **params})}, timeout=1800)


def wait_until_running(server: Server, client_id: str) -> dict:
    while True:
        queue = requests.get(f"{server.url}/queue/", timeout=30).json()
        if any(r["client_id"] == client_id for r in queue["running"]):
            return queue
        time.sleep(0.1)


def label_like(image_path: Path, value: int, out: Path) -> Path:
    image = nib.load(str(image_path))
    data = np.zeros(image.shape, np.uint8)
    data[2:-2, 2:-2, value % image.shape[2]] = value
    nib.save(nib.Nifti1Image(data, image.affine), str(out))
    return out


def test_light_requests_answer_while_an_inference_runs(server, root):
    events, lock = [], threading.Lock()

    def done(what: str) -> None:
        with lock:
            events.append(what)

    def slow() -> None:
        client(server, root, "radiologist-a").infer("wholebody", "ct", {**SLICER, "highres": True})
        done("inference")

    inference = threading.Thread(target=slow)
    inference.start()
    queue = wait_until_running(server, "radiologist-a")
    running = queue["running"][0]
    assert running["model"] == "wholebody" and running["device"] == "cpu" and queue["waiting"] == []

    other = client(server, root, "radiologist-b")
    assert "wholebody" in other.info()["models"]
    done("info")
    answer = other.save_label("p0", str(label_like(root / "studies" / "p0.nii.gz", 5, root / "p0_label.nii.gz")), params={"label_info": [{"name": "liver", "idx": 5}]})
    assert answer["label"] == "p0"
    done("label save")
    assert "p0" in other.datastore()["objects"]
    done("datastore")

    # A client that gives up while its request waits: dropped from the line, never computed.
    with pytest.raises(requests.Timeout):
        requests.post(f"{server.url}/infer/wholebody", params={"image": "crop"},
                      data={"params": json.dumps({"client_id": "impatient"})}, timeout=(30, 1))
    while requests.get(f"{server.url}/queue/", timeout=30).json()["counts"]["dropped"] < 1:
        time.sleep(0.1)
    done("dropped")
    inference.join()
    assert events == ["info", "label save", "datastore", "dropped", "inference"], events
    counts = requests.get(f"{server.url}/queue/", timeout=30).json()["counts"]
    assert counts["served"] == 1 and counts["dropped"] == 1, counts


def test_six_requests_at_once_three_served_three_refused_then_one_more_served(server, root):
    answers, lock = [], threading.Lock()
    before = requests.get(f"{server.url}/queue/", timeout=30).json()["counts"]

    def infer(image: str, client_id: str, params: dict) -> None:
        response = post_infer(server, image, {"client_id": client_id, **params})
        with lock:
            answers.append((client_id, response.status_code, response.headers.get("Retry-After"), response.text[:300]))

    first = threading.Thread(target=infer, args=("ct", "first", {"highres": False}))
    first.start()
    wait_until_running(server, "first")
    burst = [threading.Thread(target=infer, args=("crop", f"burst{i}", {"highres": False})) for i in range(5)]
    for t in burst:
        t.start()
    for t in [first, *burst]:
        t.join()

    statuses = sorted(status for _, status, _, _ in answers)
    assert statuses == [200, 200, 200, 503, 503, 503], answers
    refused = [a for a in answers if a[1] == 503]
    assert all(int(retry_after) >= 1 for _, _, retry_after, _ in refused)
    assert all(re.search(r"\d+ requests are ahead", text) for _, _, _, text in refused), refused
    # Refused at once, while the first inference still ran: all three answered before it.
    assert [a[0] for a in answers].index("first") > max(answers.index(a) for a in refused), answers

    response = post_infer(server, "crop", {"client_id": "after", "highres": False})
    assert response.status_code == 200 and "multipart" in response.headers["content-type"]
    counts = requests.get(f"{server.url}/queue/", timeout=30).json()["counts"]
    assert counts["refused_full"] - before["refused_full"] == 3 and counts["served"] - before["served"] == 4, counts


def test_fifty_concurrent_label_saves_over_ten_images_none_lost(server, root):
    saves = []  # (image, tag, value): 50 saves, 5 per image: tags final (x2), a (x2), b; each its own content
    for i in range(50):
        image = PHANTOMS[i % 10]
        saves.append((image, ("final", "final", "a", "a", "b")[i // 10], i + 1))
    files = [label_like(root / "studies" / f"{image}.nii.gz", value, root / f"save{value}.nii.gz") for image, _, value in saves]

    def save(n: int) -> dict:
        image, tag, _ = saves[n]
        return client(server, root, f"annotator{n % 8}").save_label(image, str(files[n]), tag=tag, params={})

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(save, range(50)))
    assert [a["label"] for a in answers] == [image for image, _, _ in saves]

    studies = root / "studies"
    datastore = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    for image in PHANTOMS:
        for tag in ("final", "a", "b"):
            expected = {value for i, t, value in saves if (i, t) == (image, tag)}
            assert tag in datastore[image]["labels"], (image, tag)
            current = studies / "labels" / tag / datastore[image]["labels"][tag]["info"]["name"]
            kept = [current, *(studies / "labels" / tag / "history").glob(f"{image}.*")]
            found = {int(np.asarray(nib.load(str(p)).dataobj).max()) for p in kept}
            assert expected <= found, f"{image}/{tag}: saved {sorted(expected)}, kept {sorted(found)}"
