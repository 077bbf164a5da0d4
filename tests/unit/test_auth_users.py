"""The users file and its command: bcrypt hashes, MONAI Label's roles, mode 0600, passwords never
on the command line; the server sees changes to the file at once."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import bcrypt
import pytest

from conftest import APP
from lib.server.auth.roles import ADMIN, ANNOTATOR, REVIEWER, USER, RoleError, allows, check_roles, granted
from lib.server.auth.users import Accounts, UsersFileError, read, run


@pytest.fixture(scope="module", autouse=True)
def fast_bcrypt():
    """Hashes at bcrypt's lowest cost (4, not 12): these tests are about the logic, not bcrypt's speed."""
    gensalt = bcrypt.gensalt
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bcrypt, "gensalt", lambda rounds=12, prefix=b"2b": gensalt(4, prefix))
        yield


def command(monkeypatch, *argv: str, stdin: str = "") -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return run(list(argv))


@pytest.fixture
def users(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "users.json")
    command(monkeypatch, "add", "alice", "--role", ANNOTATOR, "--users-file", path, "--password-stdin", stdin="alice-password\n")
    return path


def test_add_writes_a_bcrypt_hash_with_mode_0600(users):
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    data = json.load(open(users))
    assert data["users"]["alice"]["roles"] == [ANNOTATOR]
    assert data["users"]["alice"]["hash"].startswith("$2b$") and "alice-password" not in open(users).read()
    assert Accounts(users).verify("alice", "alice-password").roles == (ANNOTATOR,)


def test_passwd_roles_remove_list(users, monkeypatch):
    command(monkeypatch, "passwd", "alice", "--users-file", users, "--password-stdin", stdin="a-new-password\n")
    accounts = Accounts(users)
    assert accounts.verify("alice", "alice-password") is None and accounts.verify("alice", "a-new-password")
    command(monkeypatch, "roles", "alice", "--role", REVIEWER, "--role", USER, "--users-file", users)
    assert read(users)["alice"].roles == (USER, REVIEWER)
    command(monkeypatch, "add", "bob", "--role", ADMIN, "--users-file", users, "--password-stdin", stdin="bob-password\n")
    assert command(monkeypatch, "list", "--users-file", users) == f"alice: {USER}, {REVIEWER}\nbob: {ADMIN}"
    command(monkeypatch, "remove", "alice", "--users-file", users)
    assert list(read(users)) == ["bob"]


@pytest.mark.parametrize(
    "argv, stdin, message",
    [
        (["add", "alice", "--role", USER], "another-password\n", "exists"),
        (["add", "carol", "--role", USER], "short\n", "at least 8"),
        (["add", "carol", "--role", USER], "x" * 73 + "\n", "at most 72 bytes"),
        (["add", "../carol", "--role", USER], "carol-password\n", "invalid username"),
        (["passwd", "nobody"], "carol-password\n", "no user 'nobody'"),
        (["remove", "nobody"], "", "no user 'nobody'"),
    ],
)
def test_refused_changes(users, monkeypatch, argv, stdin, message):
    before = open(users).read()
    with pytest.raises(UsersFileError, match=message):
        command(monkeypatch, *argv, "--users-file", users, *(["--password-stdin"] if stdin else []), stdin=stdin)
    assert open(users).read() == before


def test_no_password_option_and_unknown_roles(users, monkeypatch):
    for argv in (["add", "carol", "--role", USER, "--password", "carol-password"], ["add", "carol", "--role", "admin"]):
        with pytest.raises(SystemExit):
            command(monkeypatch, *argv, "--users-file", users)
    assert list(read(users)) == ["alice"]


def test_prompted_password_must_be_typed_twice_the_same(tmp_path, monkeypatch):
    typed = iter(["first-password", "other-password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(typed))
    with pytest.raises(UsersFileError, match="differ"):
        run(["add", "carol", "--role", USER, "--users-file", str(tmp_path / "u.json")])
    assert not (tmp_path / "u.json").exists()


def test_the_command_runs_as_documented(tmp_path):
    path = tmp_path / "users.json"
    done = subprocess.run(
        [sys.executable, "-m", "lib.server.auth.users", "add", "dora", "--role", ADMIN, "--users-file", str(path), "--password-stdin"],
        input="dora-password\n", capture_output=True, text=True, cwd=APP, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert read(str(path))["dora"].roles == (ADMIN,)
    refused = subprocess.run(
        [sys.executable, "-m", "lib.server.auth.users", "remove", "nobody", "--users-file", str(path)],
        capture_output=True, text=True, cwd=APP, timeout=120,
    )
    assert refused.returncode == 1 and "no user 'nobody'" in refused.stderr


def test_the_server_sees_changes_to_the_file(users, monkeypatch):
    accounts = Accounts(users)
    assert accounts.get("alice").roles == (ANNOTATOR,)
    command(monkeypatch, "roles", "alice", "--role", ADMIN, "--users-file", users)
    assert accounts.get("alice").roles == (ADMIN,)
    version = accounts.get("alice").password_version
    command(monkeypatch, "passwd", "alice", "--users-file", users, "--password-stdin", stdin="changed-password\n")
    assert accounts.get("alice").password_version != version
    command(monkeypatch, "remove", "alice", "--users-file", users)
    assert accounts.get("alice") is None


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not usable"),
        ('{"users": {"alice": {"hash": "plain-text", "roles": ["monailabel-user"]}}}', "not a bcrypt hash"),
        ('{"users": {"alice": {"hash": "$2b$12$' + "a" * 53 + '", "roles": ["root"]}}}', "unknown role"),
        ('{"users": {}}', "has no users"),
    ],
)
def test_unusable_users_files_are_refused(tmp_path, content, message):
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(UsersFileError, match=message):
        Accounts(str(path))


def test_verify_refuses_unknown_users_and_overlong_passwords(users):
    accounts = Accounts(users)
    assert accounts.verify("nobody", "alice-password") is None
    assert accounts.verify("alice", "alice-password" + "x" * 80) is None
    assert accounts.verify("alice", "") is None


def test_roles_are_ranked():
    assert granted([ANNOTATOR]) == [USER, ANNOTATOR]
    assert granted([ADMIN]) == [USER, ANNOTATOR, REVIEWER, ADMIN]
    assert allows([REVIEWER], ANNOTATOR) and not allows([ANNOTATOR], REVIEWER) and not allows([], USER)
    with pytest.raises(RoleError):
        check_roles(["monailabel-root"])
    with pytest.raises(RoleError):
        check_roles([])
