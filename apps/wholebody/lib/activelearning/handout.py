"""Studies handed out for annotation are not handed out again to another client.

The server process keeps, in memory, which study each client was last given by any strategy
(``POST /activelearning/{strategy}``). Until that hand-out expires (``al_lock_minutes``) or a
label is saved for the study, other clients get other studies. A client asking again gets a
study again (its own included) and its previous hand-out is released: one study per client.

Clients are told apart by the signed-in user where accounts are on, else by the ``client_id``
they send (the Slicer module's "Client/User-ID" setting, default ``user-xyz``: annotators sharing
a server without accounts must each set their own). Requests without either count as one
anonymous client. The map is kept in a JSON file (in the model
folder), so a restarted server still knows who annotates what.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning import datastore_info
from lib.datastore.atomic import write_json_atomically
from lib.server.auth.context import signed_in_user

logger = logging.getLogger(__name__)

ANONYMOUS = ""


class Handouts:
    """image id -> (client id, time handed out), with expiry. Thread-safe; persisted to ``path`` if given."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.time, path: str | None = None):
        self.seconds = minutes * 60.0
        self.clock = clock
        self.lock = threading.RLock()
        self.path = path
        self._held: dict[str, tuple[str, float]] = self._load()

    def _load(self) -> dict[str, tuple[str, float]]:
        if not self.path or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                return {i: (str(h["client_id"]), float(h["since"])) for i, h in json.load(f).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning(f"Hand-outs in {self.path} unreadable ({e}): starting with none")
            return {}

    def _save(self) -> None:
        if not self.path:
            return
        write_json_atomically(self.path, {i: {"client_id": c, "since": t} for i, (c, t) in self._held.items()})

    def _expire(self) -> None:
        now = self.clock()
        for image_id in [i for i, (_, t) in self._held.items() if now - t >= self.seconds]:
            logger.info(f"Hand-out of {image_id} to '{self._held[image_id][0]}' expired")
            del self._held[image_id]
            self._save()

    def hand_out(self, image_id: str, client_id: str) -> None:
        with self.lock:
            for previous in [i for i, (c, _) in self._held.items() if c == client_id]:
                del self._held[previous]
            self._held[image_id] = (client_id, self.clock())
            self._save()

    def held_by_others(self, client_id: str) -> set[str]:
        with self.lock:
            self._expire()
            return {i for i, (c, _) in self._held.items() if c != client_id}

    def handed_out_at(self, image_id: str) -> float | None:
        """When the study was handed out, while the hand-out holds (correction records time from it)."""
        with self.lock:
            self._expire()
            held = self._held.get(image_id)
            return held[1] if held else None

    def release(self, image_id: str) -> None:
        with self.lock:
            if self._held.pop(image_id, None):
                logger.info(f"Hand-out of {image_id} released: a label was saved")
                self._save()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            self._expire()
            return {i: {"client_id": c, "since": int(t), "expires": int(t + self.seconds)} for i, (c, t) in self._held.items()}


class _WithoutHeld:
    """The datastore as a strategy should see it: studies held by other clients are not unlabeled-and-free."""

    def __init__(self, datastore: Datastore, held: set[str]):
        self._datastore = datastore
        self._held = held

    def get_unlabeled_images(self, *args, **kwargs):
        return [i for i in self._datastore.get_unlabeled_images(*args, **kwargs) if i not in self._held]

    def held_by_others(self) -> set[str]:
        """For strategies that count a study being annotated as good as labelled (``diversity``)."""
        return set(self._held)

    def __getattr__(self, name):
        return getattr(self._datastore, name)


class Exclusive(Strategy):
    """Any strategy, restricted to studies no other client holds; records what it hands out."""

    def __init__(self, strategy: Strategy, handouts: Handouts):
        super().__init__(f"{strategy.description}; never a study another client is annotating")
        self.strategy = strategy
        self.handouts = handouts

    def info(self):
        return {**self.strategy.info(), "description": self.description}

    def __call__(self, request, datastore: Datastore):
        client_id = signed_in_user() or str(request.get("client_id") or ANONYMOUS)
        with self.handouts.lock:  # choose and record in one step: two clients never race to one study
            datastore_info.reload(datastore)  # scores written by the scoring process
            held = self.handouts.held_by_others(client_id)
            result = self.strategy(request, _WithoutHeld(datastore, held))
            if result and result.get("id"):
                self.handouts.hand_out(result["id"], client_id)
            elif held:
                logger.info(f"{request.get('strategy')}: nothing free for '{client_id}'; held by others: {sorted(held)}")
        return result
