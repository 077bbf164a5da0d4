"""Built-in accounts as the tests meet them: users added with the users command, a server whose
readiness is probed on ``/auth/`` (``/info/`` answers 401 there), and the 3D Slicer module's own
way of signing in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import APP, Server, slicer_client_class


def add_user(users_file: Path, name: str, password: str, role: str) -> None:
    """As a PACS administrator would: the password on stdin, never on the command line."""
    done = subprocess.run(
        [sys.executable, "-m", "lib.server.auth.users", "add", name, "--role", role, "--users-file", str(users_file), "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, cwd=APP, timeout=120,
    )
    assert done.returncode == 0, done.stderr


class AccountsServer(Server):
    ready_path = "/auth/"  # /info/ answers 401 to the probe


class SlicerLogin:
    """What the Slicer module's ``MONAILabelLogic._client()`` does before every action: a new
    ``MONAILabelClient``; if ``GET /auth/`` says enabled, the token it holds is checked with
    ``/auth/token/valid`` and, if refused, it signs in again with the username and password the
    user typed once (``auth_token``)."""

    def __init__(self, url: str, tmpdir: str, username: str, password: str, client_id: str = "user-xyz"):
        self.Client = slicer_client_class()
        self.url, self.tmpdir, self.client_id = url, tmpdir, client_id
        self.username, self.password = username, password
        self.token = None
        self.sign_ins = 0

    def __call__(self):
        client = self.Client(self.url, self.tmpdir, self.client_id)
        if client.auth_enabled():
            if self.token:
                client.update_auth(self.token)
            if not self.token or not client.auth_valid_token():
                self.token = client.auth_token(self.username, self.password)
                self.sign_ins += 1
                client.update_auth(self.token)
        return client
