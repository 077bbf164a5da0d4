"""Hostile input against one real server: files built to make it read other files, allocate tens of GB,
or write where it should not; ids, params and prompts built to break it. Each gets a 4xx naming the
problem (asserted: status and words of the message), and after each:

* no file appeared outside the studies, model and session folders: the server's TMPDIR (a folder of
  this test) and the test's own folder are as before, and the server's private upload folder holds
  nothing (a request's uploads are deleted when it is answered, refused or not);
* the studies folder is unchanged (a refused upload never becomes a study);
* no byte of a file outside the datastore comes back;
* the server keeps serving (``/info/``).

``test_bad_inputs.py`` has the earlier bad inputs (unknown models and images, path tricks in image ids,
not-CT uploads, labels of the wrong shape); they are not repeated here. The table of every input and
its answer is in docs/bad-input.md.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import select
import shutil
import socket
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import CT, DICOM_SERIES, Server, free_port, slicer_client_class, wait_for

pytestmark = pytest.mark.e2e

TIMEOUT = 120
MAX_UPLOAD_MB = 1
MAX_VOXELS = 2_000_000
SECRET_MARKER = b"SECRET-OUTSIDE-THE-DATASTORE"
CROP = (slice(40, 80), slice(30, 70), slice(10, 20))  # 40x40x10 of the shared CT: air, fat, organs
NO_AIR = (slice(65, 85), slice(65, 85), slice(20, 25))  # 20x20x5 inside the abdomen: no air, lowest -131 HU

# ----------------------------------------------------------------------------- files


def nifti_bytes(array: np.ndarray, affine=None, compress: bool = True) -> bytes:
    image = nib.Nifti1Image(array, np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine)
    raw = image.to_bytes()
    return gzip.compress(raw) if compress else raw


def patched(raw: bytes, offset: int, fmt: str, value) -> bytes:
    """A NIfTI-1 header field overwritten as written on disk (nibabel would repair it on save)."""
    out = bytearray(raw)
    out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(out)


def nrrd_text(fields: dict[str, str], data: bytes = b"") -> bytes:
    head = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n"
    return head.encode() + data


NRRD_3D = {"type": "int16", "dimension": "3", "space": "left-posterior-superior", "sizes": "4 4 4",
           "space directions": "(3,0,0) (0,3,0) (0,0,3)", "endian": "little"}


@dataclass
class Files:
    root: Path
    ct: np.ndarray  # the crop
    affine: np.ndarray
    secret: Path
    secret_raw: Path

    def ct_bytes(self) -> bytes:
        return nifti_bytes(self.ct, self.affine)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def files(root) -> Files:
    image = nib.load(str(CT))
    crop = image.slicer[CROP]
    outside = root / "outside"
    outside.mkdir()
    secret_ct = np.asarray(crop.dataobj).astype("<i2")
    secret_raw = outside / "secret.raw"  # CT voxels a detached header could point at
    secret_raw.write_bytes(secret_ct.tobytes(order="F") + SECRET_MARKER)
    secret = outside / "secret.txt"
    secret.write_bytes(SECRET_MARKER + b"\npatient: somebody else\n")
    return Files(root, np.asarray(crop.dataobj), crop.affine, secret, secret_raw)


@pytest.fixture(scope="module")
def server(root, files):
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    nib.save(nib.Nifti1Image(files.ct, files.affine), str(studies / "ct.nii.gz"))
    for folder in ("tmp", "sessions"):
        (root / folder).mkdir()
    conf = {
        "models": "wholebody,spleen,vista3d",
        "max_upload_mb": str(MAX_UPLOAD_MB),
        "max_voxels": str(MAX_VOXELS),
        "skip_trainers": "true",
        "weights_url": f"http://127.0.0.1:{free_port()}/",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(root / "tmp"))  # the server's system temp folder: must stay empty
        mp.setenv("MONAI_LABEL_SESSION_PATH", str(root / "sessions"))
        s = Server(studies, root / "model", conf, root / "server.log")
    yield s
    s.stop()


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def private_files(server: Server) -> list[str]:
    """What the server's private upload folder holds (its process folder itself excepted); a request's folder
    may be going away while this looks."""
    uploads = server.model_dir / "uploads"
    found = []
    for folder, dirs, names in os.walk(uploads):
        found += [os.path.relpath(os.path.join(folder, n), uploads) for n in dirs + names if folder != str(uploads)]
    return sorted(found)


def outside_files(root: Path) -> list[str]:
    """Everything under the test's folder but the studies, model and session folders, the server's TMPDIR
    included. At start-up, before the app is loaded, ``monailabel start_server`` writes its logging config
    there and torch makes an empty ``torchinductor_<user>``: the baseline is taken after start-up."""
    allowed = {"studies", "model", "sessions"}
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] not in allowed)


@pytest.fixture(scope="module")
def after_start(server, root) -> list[str]:
    return outside_files(root)


@pytest.fixture
def unchanged(server, root, after_start):
    """Around each hostile request: nothing outside the allowed folders, no upload left, studies as they were."""
    studies = {k: v for k, v in tree(server.studies).items() if not k.startswith("datastore_v2.json")}
    before = outside_files(root)
    yield
    assert wait_for(lambda: not private_files(server), 10, 0.2), f"uploads left behind: {private_files(server)}"
    assert outside_files(root) == before, "a file appeared outside the studies, model and session folders (or in TMPDIR)"
    assert {k: v for k, v in tree(server.studies).items() if not k.startswith("datastore_v2.json")} == studies
    assert requests.get(f"{server.url}/info/", timeout=TIMEOUT).status_code == 200, "the server stopped serving"


# ----------------------------------------------------------------------------- requests


@dataclass
class Answer:
    status: int
    detail: str
    body: bytes


def answer(r: requests.Response) -> Answer:
    try:
        detail = str(r.json().get("detail", r.text))
    except ValueError:
        detail = r.text
    return Answer(r.status_code, detail, r.content)


def put_image(server: Server, name: str, data: bytes, image_id: str = "x") -> Answer:
    return answer(requests.put(f"{server.url}/datastore/image", params={"image": image_id},
                               files={"params": (None, "{}"), "file": (name, data)}, timeout=TIMEOUT))


def put_label(server: Server, name: str, data: bytes, params: dict | None = None, tag: str = "final") -> Answer:
    return answer(requests.put(f"{server.url}/datastore/label", params={"image": "ct", "tag": tag},
                               files={"params": (None, json.dumps(params or {})), "label": (name, data)}, timeout=TIMEOUT))


def infer(server: Server, params: dict | str | None = None, model: str = "spleen", image: str = "ct",
          file: tuple[str, bytes] | None = None, **query) -> Answer:
    text = params if isinstance(params, str) else json.dumps(params or {})
    fields = {"params": (None, text), **({"file": file} if file else {})}
    return answer(requests.post(f"{server.url}/infer/{model}", params={"image": "" if file else image, **query},
                                files=fields, timeout=TIMEOUT))


def session(server: Server, *uploads: tuple[str, bytes], **query) -> Answer:
    return answer(requests.put(f"{server.url}/session/", params=query,
                               files=[("files", upload) for upload in uploads], timeout=TIMEOUT))


def post_json(server: Server, path: str, body) -> Answer:
    return answer(requests.post(f"{server.url}{path}", json=body, timeout=TIMEOUT))


def multipart(name: str, data: bytes, boundary: str = "hostileboundary") -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data


def raw_upload(server: Server, head: dict[str, str], chunks=(), path: str = "PUT /datastore/image?image=big") -> Answer:
    """Sends the request head, then body chunks until the server answers; returns its answer. With no
    chunks, waits for an answer to the head alone: a declared size is refused before any body is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        lines = [f"{path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
                 "Content-Type: multipart/form-data; boundary=hostileboundary", *(f"{k}: {v}" for k, v in head.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0.05)[0]:
                break  # answered before the body ended
            sock.sendall(chunk)
            sent += len(chunk)
        else:
            assert select.select([sock], [], [], TIMEOUT)[0], f"no answer after {sent} bytes of body"
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return Answer(response.status, str(json.loads(body).get("detail")), body)


def chunked(data: bytes, size: int = 64 * 1024):
    """HTTP/1.1 chunked encoding, never ending (no last chunk): the body has no declared size."""
    for start in range(0, len(data), size):
        part = data[start : start + size]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"


# ----------------------------------------------------------------------------- the hostile inputs

MB = 1024 * 1024


def huge_nifti() -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))  # 27e12 voxels, 54 TB of int16, in 352 bytes
    header.set_data_dtype(np.int16)
    return header.binaryblock + b"\0" * 4


def huge_nrrd(sizes: str = "30000 30000 30000") -> bytes:
    return nrrd_text({**NRRD_3D, "sizes": sizes, "encoding": "gzip"}, gzip.compress(b"\0" * 1000))


def detached(files: Files, key: str = "data file", relative: bool = False) -> bytes:
    target = os.path.relpath(files.secret_raw, files.root / "studies") if relative else str(files.secret_raw)
    sizes = " ".join(str(s) for s in files.ct.shape)
    return nrrd_text({**NRRD_3D, "sizes": sizes, "encoding": "raw", key: target})


def nifti_pair_header(files: Files) -> bytes:
    return patched(nifti_bytes(files.ct, files.affine, compress=False), 344, "4s", b"ni1\0")


def analyze_header(files: Files) -> bytes:
    return nib.AnalyzeHeader().binaryblock


def mhd(files: Files) -> bytes:
    return (f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(str(s) for s in files.ct.shape)}\n"
            f"ElementType = MET_SHORT\nElementDataFile = {files.secret_raw}\n").encode()


def dicom_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for path in sorted(DICOM_SERIES.iterdir())[:2]:
            z.write(path, path.name)
    return out.getvalue()


def tar_with_link(files: Files) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        link = tarfile.TarInfo("image.nii.gz")
        link.type, link.linkname = tarfile.SYMTYPE, str(files.secret)
        t.addfile(link)
    return out.getvalue()


def truncated(files: Files) -> bytes:
    data = files.ct_bytes()
    return data[: len(data) // 2]


def corrupt_gzip(files: Files) -> bytes:
    data = bytearray(files.ct_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    return bytes(data)


def inflating(prefix: bytes, megabytes: int = 64) -> bytes:
    """``prefix`` then ``megabytes`` of zeros, gzipped: 64 MB inflate from about 65 kB."""
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    return stream.compress(prefix) + b"".join(stream.compress(b"\0" * MB) for _ in range(megabytes)) + stream.flush()


def nrrd_bomb(files: Files) -> bytes:
    """A 40x40x10 int16 NRRD header whose gzip voxels inflate to 64 MB (pynrrd would hold them all in memory)."""
    sizes = " ".join(str(s) for s in files.ct.shape)
    return nrrd_text({**NRRD_3D, "sizes": sizes, "encoding": "gzip"}) + inflating(b"")


def with_values(files: Files, value: float, dtype=np.float32) -> bytes:
    array = files.ct.astype(dtype)
    array[5, 5, 5] = value
    return nifti_bytes(array, files.affine)


def grid(files: Files, offset: int, value: float) -> bytes:
    """pixdim[1] (offset 80) or srow_y (offset 296: a direction axis equal to another)."""
    return gzip.compress(patched(nifti_bytes(files.ct, files.affine, compress=False), offset, "<f", value))


def singular(files: Files) -> bytes:
    affine = files.affine.copy()
    affine[:3, 1] = affine[:3, 0]  # the second axis runs along the first: no 3D grid
    return nifti_bytes(files.ct, affine)


def nrrd_ct(files: Files, **fields: str) -> bytes:
    sizes = " ".join(str(s) for s in files.ct.shape)
    return nrrd_text({**NRRD_3D, "sizes": sizes, "encoding": "raw", **fields}, files.ct.astype("<i2").tobytes(order="F"))


def label(files: Files, values: dict[int, float], dtype=np.uint8) -> bytes:
    array = np.zeros(files.ct.shape, dtype)
    for n, (v, value) in enumerate(values.items()):
        array[2 + 3 * n : 4 + 3 * n, 5:10, 2:4] = value
    return nifti_bytes(array, files.affine)


def seg_nrrd_bad_table(files: Files) -> bytes:
    array = np.zeros(files.ct.shape, np.uint8)
    array[5:10, 5:10, 2:4] = 1
    # the CT's RAS affine as an LPS NRRD
    lps = np.diag([-1, -1, 1, 1]) @ files.affine
    directions = " ".join(f"({','.join(str(float(x)) for x in lps[:3, i])})" for i in range(3))
    fields = {"type": "uint8", "dimension": "3", "space": "left-posterior-superior", "sizes": " ".join(map(str, array.shape)),
              "space directions": directions, "space origin": f"({','.join(str(float(x)) for x in lps[:3, 3])})",
              "encoding": "raw", "Segment0_ID": "Segment_1", "Segment0_Name": "liver", "Segment0_LabelValue": "abc",
              "Segment0_Layer": "0"}
    head = "NRRD0004\n" + "".join(f"{k}{':=' if k.startswith('Segment') else ': '}{v}\n" for k, v in fields.items()) + "\n"
    return head.encode() + array.tobytes(order="F")


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@dataclass
class Case:
    send: Callable[[Server, Files], Answer]
    status: int
    words: tuple[str, ...]


CASES: dict[str, Case] = {
    # --- uploads over --conf max_upload_mb: 413 while the body streams in
    "upload declaring more than max_upload_mb (no byte of it sent)": Case(
        lambda s, f: raw_upload(s, {"Content-Length": str(3 * MB)}), 413, ("max_upload_mb", "1 MB")),
    "chunked upload streaming past max_upload_mb": Case(
        lambda s, f: raw_upload(s, {"Transfer-Encoding": "chunked"}, chunked(multipart("big.nii.gz", b"\0" * 4 * MB))),
        413, ("max_upload_mb", "refused after")),
    "/infer upload declaring more than max_upload_mb": Case(
        lambda s, f: raw_upload(s, {"Content-Length": str(2 * MB)}, path="POST /infer/spleen"), 413, ("max_upload_mb",)),
    "params body over 1 MB": Case(lambda s, f: post_json(s, "/activelearning/first", {"x": "a" * (MB + 10)}), 413, ("parameters", "1 MB")),
    # --- headers promising more than --conf max_voxels: refused before anything is allocated
    "NIfTI header promising 27e12 voxels (upload)": Case(lambda s, f: put_image(s, "huge.nii", huge_nifti()), 422, ("max_voxels", "27,000,000,000,000")),
    "NIfTI header promising 27e12 voxels (/infer)": Case(lambda s, f: infer(s, file=("huge.nii", huge_nifti())), 422, ("max_voxels",)),
    "NRRD header promising 27e12 voxels (session)": Case(lambda s, f: session(s, ("huge.nrrd", huge_nrrd())), 422, ("max_voxels",)),
    "label NRRD header promising 4e9 voxels": Case(lambda s, f: put_label(s, "huge.nrrd", huge_nrrd("2000 2000 1000")), 422, ("max_voxels",)),
    # --- uploads that refer to other files
    "NRRD 'data file:' absolute path (upload)": Case(lambda s, f: put_image(s, "evil.nrrd", detached(f)), 422, ("detached", "another file")),
    "NRRD 'datafile:' relative path (/infer)": Case(lambda s, f: infer(s, file=("evil.nrrd", detached(f, "datafile", relative=True))), 422, ("detached",)),
    "NRRD 'data file:' as a label": Case(lambda s, f: put_label(s, "evil.nrrd", detached(f)), 422, ("detached",)),
    "NRRD 'data file:' in a session": Case(lambda s, f: session(s, ("evil.nrrd", detached(f))), 422, ("detached",)),
    "NIfTI pair header (magic ni1) as .nii": Case(lambda s, f: put_image(s, "pair.nii", nifti_pair_header(f)), 422, ("NIfTI pair", ".img")),
    "Analyze .hdr": Case(lambda s, f: put_image(s, "x.hdr", analyze_header(f)), 422, ("unsupported image format '.hdr'",)),
    ".nhdr detached header (/infer)": Case(lambda s, f: infer(s, file=("x.nhdr", detached(f))), 422, ("unsupported image format '.nhdr'",)),
    "MetaImage .mhd with ElementDataFile (/infer)": Case(lambda s, f: infer(s, file=("x.mhd", mhd(f))), 422, ("unsupported image format '.mhd'",)),
    "DICOM .zip (/infer)": Case(lambda s, f: infer(s, file=("series.zip", dicom_zip())), 422, ("unsupported image format '.zip'",)),
    "DICOM .zip (session)": Case(lambda s, f: session(s, ("series.zip", dicom_zip())), 422, ("unsupported image format '.zip'",)),
    "tar holding a link to another file (session, uncompress)": Case(
        lambda s, f: session(s, ("image.tar", tar_with_link(f)), uncompress="true"), 422, ("archives are not unpacked",)),
    "two files in one session": Case(lambda s, f: session(s, ("a.nii.gz", f.ct_bytes()), ("b.nii.gz", f.ct_bytes())), 422, ("one image file", "2 files")),
    # --- broken compression, values and grids
    "truncated .nii.gz (upload)": Case(lambda s, f: put_image(s, "cut.nii.gz", truncated(f)), 422, ("cannot read",)),
    "truncated .nii.gz (/infer)": Case(lambda s, f: infer(s, file=("cut.nii.gz", truncated(f))), 422, ("cannot read",)),
    "corrupt gzip stream (session)": Case(lambda s, f: session(s, ("bad.nii.gz", corrupt_gzip(f))), 422, ("cannot read",)),
    "gzip bomb: NRRD voxels inflating to 64 MB (upload)": Case(lambda s, f: put_image(s, "bomb.nrrd", nrrd_bomb(f)), 422, ("inflates to more", "header promises")),
    ".nii.gz inflating past its voxels (session)": Case(
        lambda s, f: session(s, ("bomb.nii.gz", inflating(nifti_bytes(f.ct, f.affine, compress=False)))), 422, ("inflates to more",)),
    "NaN voxel (upload)": Case(lambda s, f: put_image(s, "nan.nii.gz", with_values(f, np.nan)), 422, ("NaN",)),
    "Inf voxel (/infer)": Case(lambda s, f: infer(s, file=("inf.nii.gz", with_values(f, np.inf))), 422, ("NaN or infinite",)),
    "zero spacing (pixdim 0)": Case(lambda s, f: put_image(s, "zero.nii.gz", grid(f, 80, 0.0)), 422, ("voxel sizes", "positive")),
    "negative spacing (pixdim -3, /infer)": Case(lambda s, f: infer(s, file=("neg.nii.gz", grid(f, 80, -3.0))), 422, ("voxel sizes",)),
    "zero spacing (NRRD spacings, session)": Case(
        lambda s, f: session(s, ("zero.nrrd", nrrd_text({"type": "int16", "dimension": "3", "sizes": "4 4 4", "spacings": "0 3 3",
                                                         "encoding": "raw"}, b"\0" * 128))),
        422, ("spacings must be positive",)),
    "singular direction (two equal axes)": Case(lambda s, f: put_image(s, "flat.nii.gz", singular(f)), 422, ("parallel",)),
    "NaN in NRRD space directions": Case(lambda s, f: put_image(s, "dir.nrrd", nrrd_ct(f, **{"space directions": "(nan,0,0) (0,3,0) (0,0,3)"})), 422, ("finite",)),
    "MR-like volume, 0..4095 (session)": Case(
        lambda s, f: session(s, ("mr.nii.gz", nifti_bytes(np.random.default_rng(0).integers(0, 4096, f.ct.shape).astype(np.int16), f.affine))),
        422, ("Hounsfield",)),
    # --- labels
    "label with negative values": Case(lambda s, f: put_label(s, "neg.nii.gz", label(f, {1: -1}, np.int16)), 422, ("integers in [0, 255]",)),
    "label with values above 255": Case(lambda s, f: put_label(s, "big.nii.gz", label(f, {1: 300}, np.uint16)), 422, ("integers in [0, 255]",)),
    "label with NaN": Case(lambda s, f: put_label(s, "nan.nii.gz", label(f, {1: np.nan}, np.float32)), 422, ("integers",)),
    "label value no segment names": Case(
        lambda s, f: put_label(s, "l.nii.gz", label(f, {1: 1, 7: 7}), {"label_info": [{"name": "liver", "idx": 1}]}), 422, ("[7]", "no segment name")),
    "label_info idx not a number": Case(
        lambda s, f: put_label(s, "l.nii.gz", label(f, {1: 1}), {"label_info": [{"name": "liver", "idx": "abc"}]}), 422, ("'idx'", "1..255")),
    "label_info an object, not a list": Case(
        lambda s, f: put_label(s, "l.nii.gz", label(f, {1: 1}), {"label_info": {"liver": 1}}), 422, ("'label_info' must be a list",)),
    "label_info name with control characters": Case(
        lambda s, f: put_label(s, "l.nii.gz", label(f, {1: 1}), {"label_info": [{"name": "liver\x00\n", "idx": 1}]}), 422, ("printable",)),
    ".seg.nrrd segment table with a non-number value": Case(lambda s, f: put_label(s, "l.seg.nrrd", seg_nrrd_bad_table(f)), 422, ("segment table",)),
    # --- ids
    "label tag with a path": Case(lambda s, f: put_label(s, "l.nii.gz", label(f, {1: 1}), tag="../../evil"), 400, ("invalid label tag",)),
    "label tag with a newline": Case(lambda s, f: put_label(s, "l.nii.gz", label(f, {1: 1}), tag="final\nx"), 400, ("invalid label tag",)),
    "image id of 0.9 MB (in the params)": Case(lambda s, f: infer(s, {"image": "a" * 900_000}), 400, ("invalid image id", "900,000 characters")),
    "session id with a path (/infer)": Case(lambda s, f: infer(s, image="", session_id="../../etc"), 400, ("invalid session id",)),
    "session id with NUL": Case(lambda s, f: answer(requests.get(f"{s.url}/session/a%00b", timeout=TIMEOUT)), 400, ("invalid session id",)),
    "session id of 100 kB": Case(lambda s, f: answer(requests.delete(f"{s.url}/session/{'a' * 100_000}", timeout=TIMEOUT)), 400, ("invalid session id", "100,000")),
    "image id with NUL (upload)": Case(lambda s, f: put_image(s, "ct.nii.gz", f.ct_bytes(), image_id="ct\x00.nii.gz"), 400, ("invalid image id",)),
    "head name with NUL": Case(lambda s, f: answer(requests.delete(f"{s.url}/heads/wholebody/a%00b", timeout=TIMEOUT)), 422, ("invalid head name",)),
    "head name '..'": Case(lambda s, f: answer(requests.delete(f"{s.url}/heads/wholebody/%2e%2e", timeout=TIMEOUT)), 422, ("invalid head name",)),
    "client id with a newline": Case(lambda s, f: post_json(s, "/activelearning/first", {"client_id": "anna\nINFO forged log line"}), 422, ("client_id", "printable")),
    "client id of 0.9 MB": Case(lambda s, f: post_json(s, "/activelearning/first", {"client_id": "a" * 900_000}), 422, ("client_id",)),
    "client id with NUL (/infer)": Case(lambda s, f: infer(s, {"client_id": "anna\x00"}), 422, ("client_id", "printable")),
    "client id not a string (/infer)": Case(lambda s, f: infer(s, {"client_id": {"$ne": None}}), 422, ("client_id",)),
    # --- params
    "params nested 100 levels (/infer)": Case(lambda s, f: infer(s, deep(100)), 422, ("nested more than 10",)),
    "params nested 5000 levels (/infer)": Case(lambda s, f: infer(s, deep(5000)), 400, ("nested too deeply",)),
    "JSON body nested 100000 levels": Case(
        lambda s, f: answer(requests.post(f"{s.url}/activelearning/first", data="[" * 100_000 + "]" * 100_000,
                                          headers={"content-type": "application/json"}, timeout=TIMEOUT)), 400, ("parsing the body",)),
    "params an array (/infer)": Case(lambda s, f: infer(s, "[1, 2]"), 422, ("JSON object",)),
    "params 'heads' not a boolean": Case(lambda s, f: infer(s, {"heads": "maybe"}, model="wholebody"), 422, ("heads",)),
    "params 'head_overlap' a number": Case(lambda s, f: infer(s, {"head_overlap": 5}, model="wholebody"), 422, ("head_overlap",)),
    "params 'precision' unknown": Case(lambda s, f: infer(s, {"precision": "fp16"}, model="wholebody"), 422, ("'precision' must be one of fp32, bf16",)),
    "params 'skip_air' not a boolean": Case(lambda s, f: infer(s, {"skip_air": "perhaps"}, model="spleen"), 422, ("skip_air",)),
    "params 'sw_overlap' not a number": Case(lambda s, f: infer(s, {"sw_overlap": "lots", "highres": False}, model="wholebody"), 422, ("sw_overlap",)),
    "params 'label_prompt' an object (vista3d)": Case(lambda s, f: infer(s, {"label_prompt": {"liver": 1}}, model="vista3d"), 422, ("label_prompt must be a list",)),
    "scoring 'mc_samples' not a number": Case(lambda s, f: post_json(s, "/scoring/wholebody_uncertainty", {"mc_samples": "many"}), 422, ("mc_samples",)),
    "scoring 'max_studies' negative": Case(lambda s, f: post_json(s, "/scoring/wholebody_uncertainty", {"max_studies": -1}), 422, ("max_studies",)),
    "scoring 'device' unknown": Case(lambda s, f: post_json(s, "/scoring/wholebody_uncertainty", {"device": "tpu:9"}), 422, ("device",)),
    # --- VISTA3D clicks (checked before the image is read, with or without weights)
    "point NaN": Case(lambda s, f: infer(s, '{"foreground": [[NaN, 1, 1]]}', model="vista3d_point"), 422, ("finite",)),
    "point 1e300": Case(lambda s, f: infer(s, {"foreground": [[1e300, 1, 1]]}, model="vista3d_point"), 422, ("[1e+300, 1, 1] is outside the image",)),
    "point fractional": Case(lambda s, f: infer(s, {"foreground": [[1.5, 1, 1]]}, model="vista3d_point"), 422, ("integers",)),
    "5000 points": Case(lambda s, f: infer(s, {"foreground": [[1, 1, 1]] * 5000}, model="vista3d_point"), 422, ("5000 points", "at most 100")),
    "point label 7": Case(lambda s, f: infer(s, {"points": [[1, 1, 1]], "point_labels": [7]}, model="vista3d_point"), 422, ("point label",)),
    # --- result formats and types the server cannot write faithfully: 422 before any computing
    "result_extension .png (2D)": Case(lambda s, f: infer(s, {"result_extension": ".png"}), 422, ("result_extension", ".png")),
    "result_extension nrrd without a dot": Case(lambda s, f: infer(s, {"result_extension": "nrrd"}), 422, ("result_extension",)),
    "result_dtype int8": Case(lambda s, f: infer(s, {"result_dtype": "int8"}), 422, ("result_dtype", "0..255")),
    "result_dtype bool": Case(lambda s, f: infer(s, {"result_dtype": "bool"}), 422, ("result_dtype",)),
    "result_dtype foo": Case(lambda s, f: infer(s, {"result_dtype": "foo"}), 422, ("result_dtype",)),
    "result_write_to_file false": Case(lambda s, f: infer(s, {"result_write_to_file": False}), 422, ("result_write_to_file",)),
    "logging level LOUD": Case(lambda s, f: infer(s, {"logging": "LOUD"}), 422, ("logging",)),
    "output dicom_seg without a PACS": Case(lambda s, f: infer(s, output="dicom_seg"), 422, ("dicom_seg",)),
    "an uploaded 'label' file to /infer": Case(
        lambda s, f: answer(requests.post(f"{s.url}/infer/spleen", params={"image": "ct"},
                                          files={"params": (None, "{}"), "label": ("l.nii.gz", f.ct_bytes())}, timeout=TIMEOUT)),
        422, ("'label' file",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(server, files, unchanged, name):
    case = CASES[name]
    got = case.send(server, files)
    assert got.status == case.status, f"{name}: {got.status} {got.detail[:500]}"
    for word in case.words:
        assert word.lower() in got.detail.lower(), f"{name}: {word!r} not in {got.detail[:500]!r}"
    assert SECRET_MARKER not in got.body
    assert "Internal Server Error" not in got.detail


# ----------------------------------------------------------------------------- paths the server did not create


def test_a_temp_file_named_like_an_upload_is_not_an_image(server, root, files, unchanged):
    """Stock trust: any file in the temp folder named like ``tmpXXXXXXXX.*`` was "written by the server", so one
    client could name another client's leftover upload as its image."""
    leftover = root / "tmp" / "tmpab12cd34.nii.gz"
    leftover.write_bytes(files.ct_bytes())
    try:
        got = infer(server, image=str(leftover))
        assert got.status == 400 and "invalid image id" in got.detail, got
    finally:
        leftover.unlink()


def test_another_requests_upload_is_not_an_image(server, files, unchanged):
    """A file where the server keeps uploads, named as it names them, is only trusted by its own request."""
    folder = next((server.model_dir / "uploads").glob("server-*")) / "request-other"
    folder.mkdir()
    (folder / "upload0.nii.gz").write_bytes(files.ct_bytes())
    try:
        got = infer(server, {"image": str(folder / "upload0.nii.gz")})
        assert got.status == 400 and "invalid image id" in got.detail, got
        # nor through a session it does not belong to
        got = infer(server, {"image": str(folder / "upload0.nii.gz"), "session": {"name": "00000000-0000-0000-0000-000000000000"}})
        assert got.status == 400, got
    finally:
        shutil.rmtree(folder)


# ----------------------------------------------------------------------------- what still works


def test_ct_without_air_is_accepted(server, files):
    """A crop inside the abdomen (lowest value -131 HU) was refused as "does not look like CT"."""
    crop = nib.load(str(CT)).slicer[NO_AIR]
    assert np.asarray(crop.dataobj).min() == -131
    got = put_image(server, "no_air.nii.gz", nifti_bytes(np.asarray(crop.dataobj), crop.affine), image_id="no_air")
    assert got.status == 200, got
    assert (server.studies / "no_air.nii.gz").exists()


def test_uploads_sessions_and_inference_still_work_and_leave_nothing(server, root, files, after_start, tmp_path):
    client = slicer_client_class()(server.url, tmpdir=str(tmp_path))
    crop = tmp_path / "crop.nii.gz"
    crop.write_bytes(files.ct_bytes())

    session_id = client.create_session(str(crop))["session_id"]
    assert "image" not in requests.get(f"{server.url}/session/{session_id}", timeout=TIMEOUT).json()  # no server paths
    stored = [p for p in (root / "sessions" / session_id).iterdir() if p.name != "meta.info"]
    assert len(stored) == 1 and stored[0].read_bytes() == crop.read_bytes()
    result, params = client.infer("spleen", "", {"result_extension": ".nrrd"}, session_id=session_id)
    assert params["label_names"] and Path(result).stat().st_size > 0
    client.remove_session(session_id)

    with open(crop, "rb") as f:
        r = requests.post(f"{server.url}/infer/spleen", files={"params": (None, "{}"), "file": ("crop.nii.gz", f)}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:500]

    assert wait_for(lambda: not private_files(server), 10, 0.2), private_files(server)
    assert outside_files(root) == after_start
    uploads = server.model_dir / "uploads"
    assert oct(uploads.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o700" for p in uploads.iterdir())
    assert "500 Internal" not in server.log.read_text()
