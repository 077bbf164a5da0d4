"""Shared fixtures: paths, the app on sys.path, and real MONAI Label servers on 127.0.0.1.

Shared data (the CT and labels in ../shared/data, never copied into the project) has one policy: a test
never skips for lack of it; every test fails, saying which files are missing and where they belong.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "wholebody"
SHARED = ROOT.parent / "shared" / "data"
CT = SHARED / "ct" / "example_ct_sm.nii.gz"
SEG = SHARED / "ct" / "example_ct_sm_totalseg_v2.nii.gz"  # TotalSegmentator v2 labels of CT
CHANNELS = SHARED / "labels" / "wholebody_bundle_channels.json"
VISTA3D_CLASSES = SHARED / "labels" / "vista3d_classes.json"
TOTALSEGMENTATOR_CLASSES = SHARED / "labels" / "totalsegmentator_classes.json"
PACS_SERIES = SHARED / "ct" / "example_ct_dicom_pacs"
PACS_SERIES_SEG = SHARED / "ct" / "example_ct_dicom_totalseg_v2.nii.gz"  # TotalSegmentator v2 labels of PACS_SERIES
DICOM_SERIES = SHARED / "ct" / "example_ct_dicom"
SHARED_FILES = (CT, SEG, CHANNELS, VISTA3D_CLASSES, TOTALSEGMENTATOR_CLASSES, PACS_SERIES, PACS_SERIES_SEG, DICOM_SERIES)

sys.path.insert(0, str(APP))


def pytest_runtest_setup(item):
    missing = [str(path) for path in SHARED_FILES if not path.exists()]
    if missing:
        pytest.fail(f"shared test data missing: {missing}; the tests need ../shared/data beside the clone", pytrace=False)


def dciodvfy_errors(path) -> list[str]:
    """The errors David Clunie's DICOM validator (Debian dicom3tools, scripts/install-system-packages.sh)
    finds in a file; its warnings are not errors."""
    if not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy not found: install Debian's dicom3tools (scripts/install-system-packages.sh)", pytrace=False)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def shared_series_with_label():
    """The shared PACS series (JPEG 2000) and TotalSegmentator's label for it on the series' grid: (its files in
    slice order, the series as a SimpleITK image, the label's frames (slice, row, column), value -> name)."""
    import SimpleITK as sitk
    import numpy as np

    reader = sitk.ImageSeriesReader()
    files = list(reader.GetGDCMSeriesFileNames(str(PACS_SERIES)))
    reader.SetFileNames(files)
    image = reader.Execute()
    label = sitk.ReadImage(str(PACS_SERIES_SEG))
    frames = sitk.GetArrayFromImage(sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    classes = json.loads(TOTALSEGMENTATOR_CLASSES.read_text())["total_v2"]
    return files, image, frames, {int(v): classes[str(v)] for v in np.unique(frames) if v}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slicer_client_class():
    """The HTTP client of the 3D Slicer MONAI Label module, as shipped in the monailabel wheel."""
    path = Path(sys.prefix) / "monailabel" / "plugins" / "slicer" / "MONAILabel"
    if not (path / "MONAILabelLib" / "client.py").exists():
        raise RuntimeError(f"Slicer MONAI Label client not found under {path}")
    sys.path.insert(0, str(path))
    from MONAILabelLib.client import MONAILabelClient

    return MONAILabelClient


def wait_for(predicate, timeout: float, interval: float = 0.5):
    """Polls ``predicate`` until it returns something truthy or ``timeout`` seconds pass; returns its last value."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(interval)


def correction_record(url: str, study: str, timeout: float = 60, headers: dict | None = None) -> dict:
    """The correction record of a study's saved final label, as ``/datastore/?output=all`` shows it once
    the server has computed it (after answering the save); ``headers``: a signed-in user's, where accounts are on."""
    import requests

    def found():
        objects = requests.get(f"{url}/datastore/", params={"output": "all"}, headers=headers, timeout=30).json()["objects"]
        return ((objects[study]["labels"].get("final") or {}).get("info") or {}).get("corrections")

    return wait_for(found, timeout)


def wait_for_training(client, timeout: float = 1200) -> dict:
    """Polls a MONAI Label training task through the Slicer client until it ends."""
    start = time.time()
    while time.time() - start < timeout:
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            return status
        time.sleep(3)
    raise TimeoutError(f"training still running after {timeout} s: {status}")


class Server:
    """``monailabel start_server`` in its own process group, stopped with the test."""

    ready_path = "/info/"  # answers 200 once the server is up (``/auth/`` where accounts are on)

    def __init__(self, studies: Path, model_dir: Path, conf: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.studies, self.model_dir, self.log = studies, model_dir, log
        args = [
            "monailabel", "start_server", "--app", str(APP), "--studies", str(studies),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--conf", "model_dir", str(model_dir),
        ]
        for key, value in conf.items():
            args += ["--conf", key, value]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        env.setdefault("MONAI_LABEL_DATASTORE_AUTO_RELOAD", "false")
        # Scoring at start-up and after training is the active-learning tests' subject (they turn it on); elsewhere
        # its background processes only compete with the request under test for the two cores.
        env.setdefault("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
        self._log = open(log, "w")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started_in = self._wait()

    def _wait(self, timeout: float = 120) -> float:
        start = time.time()
        while time.time() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=5) as r:
                    if r.status == 200:
                        return time.time() - start
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"server did not answer in {timeout} s: {self.log.read_text()[-3000:]}")

    def info(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/info/", timeout=30) as r:
            return json.load(r)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(conf: dict[str, str] | None = None, studies: Path | None = None, model_dir: Path | None = None) -> Server:
        if studies is None:
            studies = tmp_path / "studies"
            studies.mkdir(exist_ok=True)
        model_dir = model_dir or tmp_path / "model"
        # Offline by default: an unreachable weights URL, as on CI.
        conf = {"weights_url": f"http://127.0.0.1:{free_port()}/", **(conf or {})}
        server = Server(studies, model_dir, conf, tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def ct_study(tmp_path) -> Path:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    shutil.copy(CT, studies / "ct.nii.gz")
    return studies


# ----------------------------------------------------------------------------- hospital set-up
# A DICOMweb PACS (Orthanc + DICOMweb plugin) of the test's own; scripts/pacs.py is the same
# tool the README uses to start and fill one by hand.


@pytest.fixture(scope="session")
def pacs_tools():
    """scripts/pacs.py as a module (Orthanc, upload, MissingUidError)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pacs", ROOT / "scripts" / "pacs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pacs"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def orthanc(tmp_path, pacs_tools):
    """Orthanc on 127.0.0.1 (free ports, storage under tmp_path, HTTP basic auth with a generated
    password); stopped after the test. Fails, never skips, when Orthanc cannot run here."""
    import secrets

    server = pacs_tools.Orthanc(tmp_path / "orthanc", user="radiology", password=secrets.token_urlsafe(16))
    try:
        server.start()
    except pacs_tools.PacsError as e:
        pytest.fail(f"Orthanc could not start: {e}")
    yield server
    server.stop()


def pacs_client(orthanc):
    import requests
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    session.auth = orthanc.auth
    return DICOMwebClient(url=orthanc.dicomweb_url, session=session)


def series_uids(orthanc, **filters) -> list[str]:
    import pydicom

    found = pacs_client(orthanc).search_for_series(search_filters=filters)
    return [str(pydicom.Dataset.from_json(s).SeriesInstanceUID) for s in found]


def retrieve_instances(orthanc, modality: str) -> list:
    """Every instance of the PACS's series of this modality (SEG, SR, RTSTRUCT)."""
    import pydicom

    client = pacs_client(orthanc)
    instances = []
    for item in client.search_for_series(search_filters={"Modality": modality}):
        meta = pydicom.Dataset.from_json(item)
        instances += client.retrieve_series(str(meta.StudyInstanceUID), str(meta.SeriesInstanceUID))
    return instances


def retrieve_segs(orthanc) -> list:
    return retrieve_instances(orthanc, "SEG")


def start_on_pacs(start_server, orthanc, monkeypatch, tmp_path, **conf):
    """A server on the test's Orthanc, its login from the environment as the README says."""
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", orthanc.auth[0])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", orthanc.auth[1])
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "dicomweb-cache"))
    options = {"highres": "false", "models": "wholebody,spleen", "dicomweb_retry_s": "1", **conf}
    return start_server(conf=options, studies=orthanc.dicomweb_url)
