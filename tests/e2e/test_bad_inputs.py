"""Bad requests against one real server: each gets a 4xx naming the problem, never a 500,
and none of them reads outside the studies folder, writes outside it, or changes a study or label."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import CT, Server, free_port, slicer_client_class

pytestmark = pytest.mark.e2e

TIMEOUT = 120


# ----------------------------------------------------------------------------- helpers


def save_nifti(path: Path, array: np.ndarray, zooms=None, affine=None) -> Path:
    image = nib.Nifti1Image(array, np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine)
    if zooms:
        image.header.set_zooms(zooms)
    nib.save(image, str(path))
    return path


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def detail(response: requests.Response) -> str:
    body = response.json()
    assert "detail" in body, body
    return str(body["detail"])


def assert_4xx(response: requests.Response, status, *words: str) -> str:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, f"{response.status_code}: {response.text[:1000]}"
    text = detail(response)
    for word in words:
        assert word.lower() in text.lower(), f"{word!r} not in detail {text!r}"
    return text


def infer(server: Server, model: str, image: str, params: str = "{}") -> requests.Response:
    return requests.post(
        f"{server.url}/infer/{model}", params={"image": image}, files={"params": (None, params)}, timeout=TIMEOUT
    )


def put_image(server: Server, image_id: str, path: Path, name: str | None = None) -> requests.Response:
    with open(path, "rb") as f:
        return requests.put(
            f"{server.url}/datastore/",
            params={"image": image_id},
            files={"params": (None, "{}"), "file": (name or path.name, f)},
            timeout=TIMEOUT,
        )


def put_label(server: Server, image_id: str, path: Path) -> requests.Response:
    with open(path, "rb") as f:
        return requests.put(
            f"{server.url}/datastore/label",
            params={"image": image_id},
            files={"params": (None, "{}"), "label": (path.name, f)},
            timeout=TIMEOUT,
        )


def datastore_ids(server: Server) -> set[str]:
    r = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=TIMEOUT)
    r.raise_for_status()
    return set(r.json()["objects"])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="module")
def files(root) -> dict[str, Path]:
    """Uploads, plus an MR-like 'secret' outside the studies folder that the server must never read."""
    d = root / "files"
    d.mkdir()
    shape = nib.load(str(CT)).shape
    rng = np.random.default_rng(0)
    out = {
        "random": d / "random.nii.gz",
        "text": d / "notes.txt",
        "text_as_nifti": d / "notes.nii.gz",
        "flat": save_nifti(d / "flat.nii.gz", rng.integers(-1000, 1000, (64, 64)).astype(np.int16)),
        "4d": save_nifti(d / "series.nii.gz", rng.integers(-1000, 1000, (64, 64, 8, 3)).astype(np.int16)),
        "mr": save_nifti(d / "mr.nii.gz", rng.integers(0, 1001, (64, 64, 16)).astype(np.int16)),
        "label_shape": save_nifti(d / "label_shape.nii.gz", np.zeros((64, 64, 8), np.uint8)),
        # labels on the CT's own grid (a label on another grid is refused)
        "label_float": save_nifti(d / "label_float.nii.gz", np.full(shape, 0.5, np.float32), affine=nib.load(str(CT)).affine),
        "label_ok": save_nifti(d / "label_ok.nii.gz", (rng.random(shape) > 0.9).astype(np.uint8), affine=nib.load(str(CT)).affine),
        "ct": CT,
    }
    out["random"].write_bytes(rng.bytes(4096))
    out["text"].write_text("patient: nobody\nthis is not an image\n")
    out["text_as_nifti"].write_text("this is not an image either\n")
    secret = root / "outside"
    secret.mkdir()
    out["secret"] = save_nifti(secret / "secret.nii.gz", rng.integers(0, 1001, (32, 32, 8)).astype(np.int16))
    return out


@pytest.fixture(scope="module")
def server(root, files):
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    shutil.copy(CT, studies / "ct.nii.gz")
    shutil.copy(files["label_ok"], studies / "labels" / "final" / "ct.nii.gz")
    conf = {"models": "wholebody,spleen", "weights_url": f"http://127.0.0.1:{free_port()}/"}
    (root / "sessions").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONAI_LABEL_SESSION_PATH", str(root / "sessions"))  # not the user's ~/.cache
        s = Server(studies, root / "model", conf, root / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def before(server, root) -> dict:
    """Snapshot taken before the first bad request (module fixtures run in test order)."""
    return {
        "studies": tree_hashes(server.studies),
        "root": sorted(p.name for p in root.iterdir()),
        "tmp_evil": [p for p in Path("/tmp").glob("evil*")],
    }


# ----------------------------------------------------------------------------- infer


def test_unknown_model(server, before):
    assert_4xx(infer(server, "nosuchmodel", "ct"), 404, "nosuchmodel")


def test_unknown_model_with_slicer_client(server, before):
    client = slicer_client_class()(server.url)
    with pytest.raises(Exception) as e:
        client.infer("nosuchmodel", "ct", {})
    assert "Status: 404" in e.value.msg and "nosuchmodel" in e.value.msg, e.value.msg


def test_unknown_image(server, before):
    assert_4xx(infer(server, "wholebody", "nosuchimage"), 404, "nosuchimage")


PATH_TRICKS = [
    "../../etc/passwd",
    "../../../../../../../../etc/passwd",
    "/etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",  # sent double-encoded: the server sees the %2F literally
    "file:///etc/passwd",
    "~/.bashrc",
    "..",
    ".",
    "ct/../ct",
    "./ct",
    "ct\x00.nii.gz",
    "studies/ct.nii.gz",
    "{secret}",  # absolute path of an MR-like volume outside the studies folder
    "{secret_relative}",  # the same, relative to the server's working directory (the test's)
    "../outside/secret",
    "../outside/secret.nii.gz",
]


def resolve(trick: str, files: dict[str, Path]) -> str:
    secret = files["secret"]
    return trick.format(secret=secret, secret_relative=os.path.relpath(secret, os.getcwd()))


def assert_not_read(response: requests.Response, trick: str) -> None:
    # 422 or 500 would mean the file was opened (and found not to be CT, or not an image at all):
    # a path outside the datastore must be refused before anything reads it.
    assert response.status_code in (400, 404), f"{trick!r} -> {response.status_code}: {response.text[:500]}"
    text = detail(response).lower()
    assert "hounsfield" not in text and "cannot read" not in text, (trick, text)


def test_uploaded_file_is_still_read_and_checked(server, files, before):
    """Refusing client paths must not refuse the server's own temp file of an upload."""
    with open(files["mr"], "rb") as f:
        r = requests.post(
            f"{server.url}/infer/wholebody",
            files={"params": (None, '{"highres": false}'), "file": ("mr.nii.gz", f)},
            timeout=TIMEOUT,
        )
    assert_4xx(r, 422, "Hounsfield")


def test_session_image_is_still_read_and_checked(server, files, before):
    """Nor the image of a session (the Slicer module's way to segment a volume not in the datastore): it is
    checked when the session is made, before anything is stored."""
    client = slicer_client_class()(server.url)
    with pytest.raises(Exception) as e:
        client.create_session(str(files["mr"]))
    assert "Status: 422" in e.value.msg and "Hounsfield" in e.value.msg, e.value.msg


@pytest.mark.parametrize("trick", PATH_TRICKS)
def test_path_trick_as_image_id(server, files, before, trick):
    trick = resolve(trick, files)
    assert_not_read(infer(server, "wholebody", trick, json.dumps({"highres": False})), trick)


@pytest.mark.parametrize("trick", ["/etc/passwd", "../../etc/passwd", "{secret}", "{secret_relative}"])
def test_path_trick_in_params(server, files, before, trick):
    """The params form field is merged over the query string, so it can carry an image path too."""
    trick = resolve(trick, files)
    assert_not_read(infer(server, "wholebody", "ct", json.dumps({"image": trick, "highres": False})), trick)


def test_path_trick_in_model_name(server, before):
    r = requests.post(f"{server.url}/infer/..%2F..%2Fetc%2Fpasswd", params={"image": "ct"}, timeout=TIMEOUT)
    assert 400 <= r.status_code < 500, r.text


def test_params_not_json(server, before):
    assert_4xx(infer(server, "wholebody", "ct", "{not json"), 400, "json")


def test_params_bad_highres(server, before):
    assert_4xx(infer(server, "wholebody", "ct", json.dumps({"highres": "banana"})), 422, "highres", "banana")


# ----------------------------------------------------------------------------- image uploads


@pytest.mark.parametrize(
    "key, words",
    [
        ("random", ["cannot read"]),
        ("text", ["unsupported image format", ".txt"]),
        ("text_as_nifti", ["cannot read"]),
        ("flat", ["3D", "(64, 64)"]),
        ("4d", ["3D", "(64, 64, 8, 3)"]),
        ("mr", ["CT", "Hounsfield"]),
    ],
)
def test_upload_not_ct(server, files, before, key, words):
    image_id = f"x_{key}"
    assert_4xx(put_image(server, image_id, files[key]), (400, 415, 422), *words)
    assert image_id not in datastore_ids(server)
    assert not list(server.studies.glob(f"{image_id}*"))


def test_upload_not_ct_with_slicer_client(server, files, before):
    client = slicer_client_class()(server.url)
    with pytest.raises(Exception) as e:
        client.upload_image(str(files["mr"]), "x_mr_slicer")
    assert "Status: 422" in e.value.msg and "Hounsfield" in e.value.msg, e.value.msg


@pytest.mark.parametrize(
    "image_id", ["../evil", "../../evil", "/tmp/evil", "sub/evil", "..", ".evil", "..%2Fevil", "evil\\..\\x"]
)
def test_upload_path_trick(server, files, before, image_id):
    assert_4xx(put_image(server, image_id, files["ct"]), 400, "invalid image id")


def test_upload_existing_id(server, files, before):
    original = (server.studies / "ct.nii.gz").read_bytes()
    assert_4xx(put_image(server, "ct", files["mr"]), 409, "ct", "already exists")
    assert_4xx(put_image(server, "ct", files["ct"], name="other.nii.gz"), 409, "already exists")
    assert (server.studies / "ct.nii.gz").read_bytes() == original


# ----------------------------------------------------------------------------- labels


def test_label_wrong_shape(server, files, before):
    assert_4xx(put_label(server, "ct", files["label_shape"]), 422, "shape", "(64, 64, 8)")


def test_label_wrong_shape_with_slicer_client(server, files, before):
    client = slicer_client_class()(server.url)
    with pytest.raises(Exception) as e:
        client.save_label("ct", str(files["label_shape"]))
    assert "Status: 422" in e.value.msg and "shape" in e.value.msg, e.value.msg


def test_label_fractional(server, files, before):
    assert_4xx(put_label(server, "ct", files["label_float"]), 422, "integers")


def test_label_unknown_image(server, files, before):
    assert_4xx(put_label(server, "nosuchimage", files["label_ok"]), 404, "nosuchimage")


def test_label_path_trick(server, files, before):
    assert_4xx(put_label(server, "../ct", files["label_ok"]), 400, "invalid image id")


# ----------------------------------------------------------------------------- train


def test_train_unknown_model(server, before):
    r = requests.post(f"{server.url}/train/nosuchmodel", json={}, timeout=TIMEOUT)
    assert_4xx(r, 404, "nosuchmodel")


# ----------------------------------------------------------------------------- afterwards


def test_nothing_changed_and_server_still_works(server, root, files, before):
    assert "500 Internal" not in server.log.read_text()
    assert tree_hashes(server.studies) == before["studies"], "a bad request changed the studies folder"
    assert sorted(p.name for p in root.iterdir()) == before["root"], "a file appeared outside the studies folder"
    assert [p for p in Path("/tmp").glob("evil*")] == before["tmp_evil"]

    info = server.info()
    assert {"wholebody", "spleen"} <= set(info["models"])

    client = slicer_client_class()(server.url)
    assert client.upload_image(str(files["ct"]), "ct_copy")["image"] == "ct_copy"
    assert (server.studies / "ct_copy.nii.gz").read_bytes() == CT.read_bytes()
    assert "ct_copy" in datastore_ids(server)

    after = tree_hashes(server.studies)
    changed = {k for k, v in before["studies"].items() if after.get(k) != v}
    # The datastore index records the new image; every study and label file is untouched.
    assert changed <= {"datastore_v2.json"}, changed
    assert after["ct.nii.gz"] == before["studies"]["ct.nii.gz"]
    assert after["labels/final/ct.nii.gz"] == before["studies"]["labels/final/ct.nii.gz"]
