"""``<out>/manifest.jsonl``: what a batch run did, one JSON line per study, so a rerun skips studies
already done with the same checkpoint and params.

Only the driver writes it. Each line is appended with one ``write`` of the whole line and fsynced, so a
crash leaves at most a cut last line, which reading ignores (that study is simply done again). A run
starts with a ``{"run": ...}`` line (its params, checkpoint and key); each study's line says ``done``
(with the label file and its measurements' rows) or ``failed`` (with the reason), the run's ``key``, the study's version (size
and mtime of its file) and the seconds per stage.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

FILE_NAME = "manifest.jsonl"
OUTPUTS = ("label", "measurements")  # a done study's files, relative to the output folder


class Manifest:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, FILE_NAME)

    def records(self) -> Iterator[dict[str, Any]]:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(record, dict):
                    yield record

    def latest(self) -> dict[str, dict[str, Any]]:
        """Each study's last record."""
        latest: dict[str, dict] = {}
        for record in self.records():
            if "study" in record:
                latest[record["study"]] = record
        return latest

    def done(self) -> dict[str, dict[str, Any]]:
        """Studies whose last record is done, with their files (label, measurements) still there."""
        return {
            study: record
            for study, record in self.latest().items()
            if record.get("status") == "done"
            and "label" in record
            and all(os.path.isfile(os.path.join(self.out_dir, record[f])) for f in OUTPUTS if f in record)
        }

    def settled(self, key: str, versions: dict[str, str], retry_failed: bool = False) -> set[str]:
        """Studies a rerun with this key leaves alone: done (label and measurement files still there) or
        failed for good (unreadable, not a CT), both on the same version of the study. Failures talking to
        the PACS (``retry``) are tried again, and every failure with ``retry_failed``."""
        done = self.done()
        settled = set()
        for study, record in self.latest().items():
            if record.get("key") != key or record.get("version") != versions.get(study):
                continue
            if study in done:
                settled.add(study)
            elif record.get("status") == "failed" and not record.get("retry") and not retry_failed:
                settled.add(study)
        return settled

    def start_run(self, key: str, params: dict[str, Any], **details: Any) -> None:
        self._append({"run": {"key": key, "params": params, **details, "started": _now()}})

    def record(self, study: str, key: str, status: str, **details: Any) -> dict[str, Any]:
        record = {"study": study, "status": status, "key": key, **details, "time": _now()}
        self._append(record)
        return record

    def _append(self, record: dict[str, Any]) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
