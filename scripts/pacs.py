#!/usr/bin/env python
"""A local DICOMweb PACS (Orthanc + its DICOMweb plugin) on 127.0.0.1, and an uploader for it.

    python scripts/pacs.py start [--port 8042] [--dicom-port 4242] [--storage DIR] [--user NAME]
    python scripts/pacs.py upload DIR_OR_FILE... [--url http://127.0.0.1:8042/dicom-web]

``start`` runs Debian's Orthanc in the foreground with a generated configuration: HTTP only from
127.0.0.1, the DICOMweb plugin at ``/dicom-web/``, storage in ``--storage`` (default: a new
temporary folder, deleted when Orthanc stops). With ``--user``, HTTP basic authentication is on
and the password is read from ``PACS_PASSWORD`` (never from the command line).

``upload`` sends DICOM files to any DICOMweb server with STOW-RS. Files without the identifiers
a PACS needs (SOP Instance, Study and Series Instance UID) are refused before anything is sent,
naming the file and the missing attributes. Credentials come from the environment, as for the
MONAI Label server: ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``MONAI_LABEL_DICOMWEB_PASSWORD``.

The tests import this module (``Orthanc``, ``upload``) to start and fill their own PACS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

ORTHANC = "Orthanc"
PLUGIN_NAME = "libOrthancDicomWeb.so"
PLUGIN_PACKAGE = "orthanc-dicomweb"
REQUIRED_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class PacsError(RuntimeError):
    """Orthanc missing, not starting, or refusing an upload."""


class MissingUidError(PacsError, ValueError):
    """A DICOM file lacks the identifiers a PACS needs to store it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_executable() -> str:
    path = shutil.which(ORTHANC) or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
    if not path:
        raise PacsError(
            "Orthanc is not installed: run scripts/setup.sh, or `apt-get install orthanc orthanc-dicomweb` (Debian)"
        )
    return path


def dicomweb_plugin() -> str:
    """The plugin's shared library, as installed by the Debian package."""
    candidates = []
    try:
        listing = subprocess.run(["dpkg", "-L", PLUGIN_PACKAGE], capture_output=True, text=True, check=False).stdout
        candidates += [line for line in listing.splitlines() if line.endswith(PLUGIN_NAME)]
    except OSError:
        pass
    candidates += [f"/usr/share/orthanc/plugins/{PLUGIN_NAME}", f"/usr/lib/orthanc/{PLUGIN_NAME}"]
    for path in candidates:
        if os.path.exists(path):
            return path
    raise PacsError(
        f"the Orthanc DICOMweb plugin ({PLUGIN_NAME}) is not installed: run scripts/setup.sh, "
        f"or `apt-get install {PLUGIN_PACKAGE}` (Debian)"
    )


def orthanc_config(storage: Path, http_port: int, dicom_port: int, users: dict[str, str] | None) -> dict:
    return {
        "Name": "wholebody-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # answers 127.0.0.1 only
        "HttpCompressionEnabled": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "DicomServerEnabled": True,
        "DicomAet": "WHOLEBODYPACS",
        "DicomPort": dicom_port,
        # Nothing comes in or goes out over DIMSE: studies arrive by STOW-RS (DICOMweb).
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado", "Ssl": False},
    }


def _die_with_parent() -> None:
    """Linux: Orthanc gets SIGTERM when the process that started it dies (a killed test run)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Orthanc:
    """Orthanc as a child process in its own process group, with a generated configuration."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        dicom_port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        storage: Path | None = None,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.storage = Path(storage) if storage else self.workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.auth = (user, password) if user else None
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.log = self.workdir / "orthanc.log"
        self.config = self.workdir / "orthanc.json"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Orthanc":
        executable = orthanc_executable()
        users = {self.auth[0]: self.auth[1]} if self.auth else None
        self.config.write_text(json.dumps(orthanc_config(self.storage, self.port, self.dicom_port, users), indent=2))
        self._log = open(self.log, "ab")
        self.process = subprocess.Popen(
            [executable, str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        import requests

        start = time.time()
        while time.time() - start < timeout:
            if self.process.poll() is not None:
                raise PacsError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                r = requests.get(f"{self.dicomweb_url}/studies", auth=self.auth, timeout=5)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise PacsError(f"Orthanc did not answer on {self.url} within {timeout} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise PacsError(f"{path}: no such file or folder")
    if not files:
        raise PacsError(f"no files to upload in {', '.join(map(str, paths))}")
    return files


def check_uids(files: Sequence[Path]) -> None:
    """Refuses files that a PACS cannot index, before anything is sent."""
    import pydicom

    problems = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:
            problems.append(f"{path.name}: not a DICOM file ({e})")
            continue
        missing = [uid for uid in REQUIRED_UIDS if not str(ds.get(uid, "") or "").strip()]
        if missing:
            problems.append(f"{path.name}: empty {', '.join(missing)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise MissingUidError(
            f"{len(problems)} of {len(files)} file(s) cannot be stored in a PACS, which indexes every instance by "
            f"its SOP Instance, Study and Series Instance UIDs ({shown}). Anonymisation removed them: "
            "stamp new UIDs in (e.g. the shared example_ct_dicom_pacs/ series) and upload again."
        )


def env_auth() -> tuple[str, str] | None:
    user = os.environ.get("MONAI_LABEL_DICOMWEB_USERNAME") or os.environ.get("MONAI_LABEL_DATASTORE_USERNAME")
    password = os.environ.get("MONAI_LABEL_DICOMWEB_PASSWORD") or os.environ.get("MONAI_LABEL_DATASTORE_PASSWORD")
    return (user, password) if user and password else None


def upload(paths: Iterable[str | Path], dicomweb_url: str, auth: tuple[str, str] | None = None) -> dict[str, set[str]]:
    """STOW-RS of every file; returns {StudyInstanceUID: {SeriesInstanceUID, ...}} of what was stored."""
    import pydicom
    import requests
    from dicomweb_client import DICOMwebClient

    files = dicom_files(paths)
    check_uids(files)
    session = requests.Session()
    session.auth = auth
    client = DICOMwebClient(url=dicomweb_url.rstrip("/"), session=session)
    stored: dict[str, set[str]] = {}
    datasets = [pydicom.dcmread(path) for path in files]
    try:
        response = client.store_instances(datasets)
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            raise PacsError(
                f"the PACS at {dicomweb_url} refused the login (HTTP {status}): "
                "set MONAI_LABEL_DICOMWEB_USERNAME and MONAI_LABEL_DICOMWEB_PASSWORD"
            ) from None
        body = e.response.text[:300] if e.response is not None else ""
        raise PacsError(f"the PACS at {dicomweb_url} refused the upload (HTTP {status}): {body}") from None
    except requests.ConnectionError as e:
        raise PacsError(f"the PACS at {dicomweb_url} is unreachable: {e}") from None
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reasons = [f"{item.get('ReferencedSOPInstanceUID', '?')}: reason {item.get('FailureReason', '?')}" for item in failed]
        raise PacsError(f"the PACS refused {len(failed)} instance(s): {'; '.join(reasons[:5])}")
    for ds in datasets:
        stored.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SeriesInstanceUID))
    return stored


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run Orthanc + DICOMweb on 127.0.0.1 in the foreground")
    start.add_argument("--port", type=int, default=8042, help="HTTP (DICOMweb) port (default 8042)")
    start.add_argument("--dicom-port", type=int, default=4242, help="DICOM port (default 4242)")
    start.add_argument("--storage", help="storage folder (default: a temporary one, deleted at exit)")
    start.add_argument("--user", help="require HTTP basic auth for this user; password from PACS_PASSWORD")
    up = sub.add_parser("upload", help="STOW-RS DICOM files or folders to a DICOMweb server")
    up.add_argument("paths", nargs="+")
    up.add_argument("--url", default="http://127.0.0.1:8042/dicom-web", help="DICOMweb root")
    args = parser.parse_args(argv)

    if args.command == "upload":
        try:
            stored = upload(args.paths, args.url, env_auth())
        except PacsError as e:
            print(f"upload: {e}", file=sys.stderr)
            return 2
        for study, series in stored.items():
            print(f"study {study}: series {', '.join(sorted(series))}")
        return 0

    password = None
    if args.user:
        password = os.environ.get("PACS_PASSWORD")
        if not password:
            print("start: --user needs the password in the environment variable PACS_PASSWORD", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="wholebody-pacs-"))
    storage = Path(args.storage).resolve() if args.storage else workdir / "storage"
    orthanc = Orthanc(workdir, args.port, args.dicom_port, args.user, password, storage)
    try:
        orthanc.start()
        print(f"Orthanc: DICOMweb at {orthanc.dicomweb_url} (storage {storage}; log {orthanc.log}); Ctrl-C stops it")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while orthanc.running():
            time.sleep(1)
        print(f"Orthanc exited: {orthanc.log_tail()}", file=sys.stderr)
        return 1
    except PacsError as e:
        print(f"start: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        orthanc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
