"""Tokens ended before their expiry: signing out ends the token on the server, not only in the browser.

A token is a signed claim that stays valid until it expires (8 h by default); clearing the browser's
cookie leaves a copied token working. Each token carries a random id (``jti``); signing out puts that id
here until the token would have expired anyway, so the list stays as short as the tokens still alive.
Kept in a file (mode 0600, written atomically) so a restart does not bring signed-out tokens back.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from lib.datastore.atomic import write_json_atomically

logger = logging.getLogger(__name__)


class RevokedTokens:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._until: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        if not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                return {str(k): int(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            # Unreadable: refuse to start rather than bring signed-out tokens back.
            raise RuntimeError(f"signed-out tokens in {self.path} are unreadable ({e}): fix or remove the file") from None

    def revoke(self, token_id: str, expires: int) -> None:
        with self._lock:
            now = int(time.time())
            self._until = {k: v for k, v in self._until.items() if v > now}
            self._until[token_id] = expires
            write_json_atomically(self.path, self._until)
            os.chmod(self.path, 0o600)

    def __contains__(self, token_id: str) -> bool:
        return token_id in self._until
