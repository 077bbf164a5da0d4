"""The audit log: one JSON object per line, appended, never rewritten (``--conf audit_log``).

Records who signed in or failed to, and who saved, deleted, trained, changed heads or models,
from which address and when, and what the server answered::

    {"time": "2025-01-31T09:12:03.412Z", "event": "save_label", "user": "alice",
     "address": "10.0.0.7", "method": "PUT", "path": "/datastore/label",
     "query": {"image": "ct1", "tag": "final"}, "status": 200}

``user`` is null where accounts are off. Values a client chose are cut at 256 characters, so the
log cannot be flooded through it; passwords, tokens and PACS credentials are never in it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from typing import Any, Optional

logger = logging.getLogger(__name__)

MAX_VALUE = 256


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_VALUE:
        return value[:MAX_VALUE] + "..."
    if isinstance(value, dict):
        return {_cut(k): _cut(v) for k, v in list(value.items())[:32]}
    return value


class AuditLog:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()

    def _append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=True, separators=(", ", ": ")) + "\n"
        with self._lock:
            # O_APPEND: every line lands at the end, whoever else writes to the file.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def record(
        self,
        event: str,
        user: Optional[str],
        address: Optional[str],
        *,
        method: Optional[str] = None,
        path: Optional[str] = None,
        query: Optional[dict] = None,
        status: Optional[int] = None,
        **details: Any,
    ) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        entry = {"time": now, "event": event, "user": user, "address": address}
        entry.update({k: v for k, v in (("method", method), ("path", path), ("query", query), ("status", status)) if v is not None})
        entry.update(details)
        try:
            self._append(_cut(entry))
        except OSError as e:  # an unwritable log must not take the server down; it says so loudly
            logger.error(f"audit log {self.path} not written ({e}): {event} by {user}")
