"""The versions of one served checkpoint, in a plain folder beside it.

``<model_dir>/versions/<slot>/`` (``slot``: the served file's name, e.g. ``wholebody_lowres``) holds
``<n>/model.pt`` and ``<n>/version.json`` (number, time, trainer, studies, metrics, parent) for each
version, and ``state.json``: the version being served and the pinned one. The served file the infer tasks
read (``<slot>.pt``, reloaded when its mtime changes) is always a copy of the serving version: the pinned
one, else the newest. The trainer (a task process) and the server (pins) share the folder under a file lock.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, BinaryIO, Callable

from lib.datastore.atomic import SharedLock, copy_atomically, write_atomically, write_json_atomically

logger = logging.getLogger(__name__)

WEIGHTS = "model.pt"


class VersionError(ValueError):
    """A version that cannot be served (missing or corrupt file): answered 422 with this message."""


class UnknownVersionError(VersionError, LookupError):
    """A version number the slot does not have: answered 404."""


# served path -> its store, as the model's config made it (with --conf max_model_versions) in this process.
_STORES: dict[str, "VersionStore"] = {}


def versions_of(served_path: str) -> "VersionStore":
    """The store of a served checkpoint: the one its config made, else one that keeps every version."""
    return _STORES.get(os.path.abspath(served_path)) or VersionStore(served_path)


def known_stores() -> dict[str, "VersionStore"]:
    """Served path -> store, for every store made in this process."""
    return dict(_STORES)


class VersionStore:
    def __init__(self, served_path: str, keep: int = 0):
        """``keep``: how many versions to keep at most (0: all); the serving and pinned ones are never deleted."""
        _STORES[os.path.abspath(served_path)] = self
        self.served_path = served_path
        self.slot = os.path.basename(served_path).removesuffix(".pt")
        self.folder = os.path.join(os.path.dirname(served_path), "versions", self.slot)
        self.keep = keep
        os.makedirs(self.folder, exist_ok=True)
        self.lock = SharedLock(os.path.join(self.folder, ".lock"))

    # ------------------------------------------------------------------ reading
    def _read(self, path: str, default: Any) -> Any:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return default

    def state(self) -> dict[str, Any]:
        return {"serving": None, "pinned": None, **self._read(os.path.join(self.folder, "state.json"), {})}

    def versions(self) -> list[dict[str, Any]]:
        found = []
        for name in os.listdir(self.folder):
            if name.isdigit():
                record = self._read(os.path.join(self.folder, name, "version.json"), None)
                if record:
                    found.append(record)
        return sorted(found, key=lambda r: r["version"])

    def weights(self, number: int) -> str:
        return os.path.join(self.folder, str(int(number)), WEIGHTS)

    def describe(self) -> dict[str, Any]:
        """What ``/info/`` and ``GET /versions/{slot}`` show."""
        state = self.state()
        return {"slot": self.slot, **state, "versions": [v["version"] for v in self.versions()]}

    # ------------------------------------------------------------------ training
    def begin(self, trainer: str, studies: list[str]) -> int:
        """A new version number for a training run; its parent is the version served when the run began."""
        with self.lock:
            number = max([v["version"] for v in self.versions()] + self._numbers() + [0]) + 1
            os.makedirs(os.path.join(self.folder, str(number)))
            record = {
                "version": number,
                "created": time.time(),
                "trainer": trainer,
                "studies": sorted(studies),
                "metrics": {},
                "parent": self.state()["serving"],
                "published": False,
            }
            write_json_atomically(os.path.join(self.folder, str(number), "version.json"), record, indent=1)
            return number

    def _numbers(self) -> list[int]:
        return [int(n) for n in os.listdir(self.folder) if n.isdigit()]

    def publish(self, number: int, write: Callable[[BinaryIO], Any], metrics: dict[str, float]) -> None:
        """The run's (better) weights as version ``number``; served at once unless a version is pinned."""
        with self.lock:
            write_atomically(self.weights(number), write)
            path = os.path.join(self.folder, str(number), "version.json")
            record = {**self._read(path, {}), "metrics": metrics, "published": True, "updated": time.time()}
            write_json_atomically(path, record, indent=1)
            if self.state()["pinned"] is None:
                self._serve(number, pinned=None)
            self._prune()

    # ------------------------------------------------------------------ admin
    def pin(self, number: int, check: Callable[[str], None]) -> dict[str, Any]:
        """Serves ``number`` until unpinned. ``check(path)`` raises on weights that cannot be loaded: such a
        version is refused and the current one keeps serving."""
        with self.lock:
            self._checked(number, check)
            self._serve(number, pinned=number)
            return self.describe()

    def unpin(self, check: Callable[[str], None]) -> dict[str, Any]:
        """Back to the newest version that loads."""
        with self.lock:
            for record in reversed([v for v in self.versions() if v.get("published")]):
                try:
                    self._checked(record["version"], check)
                except VersionError as e:
                    logger.warning(f"{self.slot}: newest version skipped: {e}")
                    continue
                self._serve(record["version"], pinned=None)
                return self.describe()
            write_json_atomically(os.path.join(self.folder, "state.json"), {**self.state(), "pinned": None})
            return self.describe()

    def delete(self, number: int) -> None:
        with self.lock:
            state = self.state()
            if number in (state["serving"], state["pinned"]):
                raise VersionError(f"version {number} of {self.slot} is being served; pin another one first")
            if not os.path.isdir(os.path.join(self.folder, str(int(number)))):
                raise UnknownVersionError(f"{self.slot} has no version {number}")
            shutil.rmtree(os.path.join(self.folder, str(int(number))))

    # ------------------------------------------------------------------ internals
    def _checked(self, number: int, check: Callable[[str], None]) -> None:
        path = self.weights(number)
        if not any(v["version"] == number for v in self.versions()):
            raise UnknownVersionError(f"{self.slot} has no version {number}; versions: {[v['version'] for v in self.versions()]}")
        # Answers name the file inside the versions folder, never where that folder lies on the server.
        shown = f"versions/{self.slot}/{int(number)}/{WEIGHTS}"
        if not os.path.isfile(path):
            raise VersionError(f"version {number} of {self.slot} has no weights file ({shown} is missing)")
        try:
            check(path)
        except Exception as e:  # whatever torch or the network says about the file
            raise VersionError(f"version {number} of {self.slot} cannot be loaded ({shown}): {str(e).replace(path, shown)[:300]}") from None

    def _serve(self, number: int, pinned: int | None) -> None:
        copy_atomically(self.weights(number), self.served_path)
        write_json_atomically(os.path.join(self.folder, "state.json"), {"serving": number, "pinned": pinned})
        logger.info(f"{self.slot}: serving version {number}{' (pinned)' if pinned else ''}")

    def _prune(self) -> None:
        if not self.keep:
            return
        state = self.state()
        kept = {state["serving"], state["pinned"]}
        deletable = [n for n in sorted(self._numbers()) if n not in kept]
        for number in deletable[: max(0, len(self._numbers()) - self.keep)]:
            shutil.rmtree(os.path.join(self.folder, str(number)), ignore_errors=True)
            logger.info(f"{self.slot}: version {number} deleted (--conf max_model_versions {self.keep})")
