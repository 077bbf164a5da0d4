"""The users file: username -> bcrypt hash and MONAI Label roles, and the command that edits it.

    python -m lib.server.auth.users add alice --role monailabel-annotator --users-file /srv/ml/users.json
    python -m lib.server.auth.users passwd alice --users-file ...      # new password
    python -m lib.server.auth.users roles alice --role monailabel-reviewer --users-file ...
    python -m lib.server.auth.users remove alice --users-file ...
    python -m lib.server.auth.users list --users-file ...

Run from ``apps/wholebody``. Passwords are prompted twice, or read from one line of stdin with
``--password-stdin``; never taken from the command line, where other local users see them. The
file is JSON, replaced atomically and readable by its owner only (mode 0600)::

    {"users": {"alice": {"hash": "$2b$12$...", "roles": ["monailabel-annotator"]}}}

The server re-reads the file when it changes: a removed user or a changed password ends that
user's sessions at their next request, a changed role applies at once.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from typing import Optional

import bcrypt

from lib.server.auth.roles import RANKED, RoleError, check_roles

logger = logging.getLogger(__name__)

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; longer ones are refused, not silently cut


@cache
def _unknown_user_hash() -> bytes:
    """Checked against when the user does not exist, so that a login takes as long either way."""
    return bcrypt.hashpw(b"no such user", bcrypt.gensalt())


class UsersFileError(ValueError):
    """A users file that cannot be used, or a change to it that is refused."""


@dataclass(frozen=True)
class Account:
    username: str
    hash: str
    roles: tuple[str, ...]

    @property
    def password_version(self) -> str:
        """Changes with the password: tokens carry it, so a new password ends old sessions."""
        return hashlib.sha256(self.hash.encode()).hexdigest()[:16]


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME.match(username):
        raise UsersFileError(
            f"invalid username {username!r}: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    return username


def hash_password(password: str) -> str:
    encoded = password.encode()
    if len(password) < MIN_PASSWORD:
        raise UsersFileError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise UsersFileError(f"the password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    return bcrypt.hashpw(encoded, bcrypt.gensalt()).decode()


def _bcrypt_hash(value) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", value):
        raise ValueError("a 'hash' is not a bcrypt hash")
    return value


def read(path: str) -> dict[str, Account]:
    try:
        with open(path) as f:
            data = json.load(f)
        return {
            check_username(name): Account(name, _bcrypt_hash(entry["hash"]), tuple(check_roles(entry["roles"])))
            for name, entry in data["users"].items()
        }
    except FileNotFoundError:
        raise UsersFileError(f"users file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RoleError) as e:
        raise UsersFileError(f"users file {path} is not usable: {e}") from None


def write(path: str, accounts: dict[str, Account]) -> None:
    """Atomically, mode 0600: a reader sees the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    data = {"users": {a.username: {"hash": a.hash, "roles": list(a.roles)} for a in accounts.values()}}
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=folder)  # created with mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Accounts:
    """The users file as the server sees it: re-read when it changes on disk."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: Optional[tuple[int, int, int]] = None
        self._accounts: dict[str, Account] = {}
        self._reload()
        if not self._accounts:
            raise UsersFileError(f"users file {path} has no users: add one with `python -m lib.server.auth.users add`")
        if os.stat(path).st_mode & 0o077:
            logger.warning(f"users file {path} is readable by other users: chmod 600 it")

    def _reload(self) -> None:
        st = os.stat(self.path)  # FileNotFoundError: the file was removed, nobody may sign in
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._accounts = read(self.path)
            self._stamp = stamp
            logger.info(f"Users file {self.path}: {len(self._accounts)} user(s)")

    def get(self, username: str) -> Optional[Account]:
        with self._lock:
            try:
                self._reload()
            except FileNotFoundError:
                logger.error(f"users file {self.path} was removed: nobody can sign in")
                self._accounts, self._stamp = {}, None
            except UsersFileError as e:
                logger.error(f"{e}; keeping the users read before")
            return self._accounts.get(username)

    def verify(self, username: str, password: str) -> Optional[Account]:
        """The account if the password is its own; slow on purpose (bcrypt), as slow for unknown users."""
        account = self.get(username) if isinstance(username, str) else None
        encoded = password.encode() if isinstance(password, str) else b""
        if len(encoded) > MAX_PASSWORD_BYTES:
            encoded = b""  # bcrypt 5 raises on these; no such password can have been set
        matches = bcrypt.checkpw(encoded, account.hash.encode() if account else _unknown_user_hash())
        return account if account and matches else None


# ----------------------------------------------------------------------------- the command
def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UsersFileError("the passwords differ")
    return first


def _existing(path: str) -> dict[str, Account]:
    return read(path) if os.path.exists(path) else {}


def run(argv: list[str]) -> str:
    """Does what the command line asks; returns what to print."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--users-file", required=True, help="the JSON file given to the server as --conf auth_users")
    parser = argparse.ArgumentParser(prog="python -m lib.server.auth.users", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("add", "add a user"), ("passwd", "set a user's password"), ("roles", "set a user's roles")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("username")
        if name != "passwd":
            sub.add_argument("--role", action="append", required=True, choices=RANKED, help="repeat for several")
        if name != "roles":
            sub.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    commands.add_parser("remove", parents=[common], help="remove a user").add_argument("username")
    commands.add_parser("list", parents=[common], help="list users and roles")
    args = parser.parse_args(argv)

    path = os.path.abspath(args.users_file)
    accounts = _existing(path)
    if args.command == "list":
        return "\n".join(f"{a.username}: {', '.join(a.roles)}" for a in accounts.values()) or "no users"
    name = check_username(args.username)
    if args.command == "add":
        if name in accounts:
            raise UsersFileError(f"user '{name}' exists; use passwd or roles")
        accounts[name] = Account(name, hash_password(_password(args.password_stdin)), tuple(check_roles(args.role)))
    elif name not in accounts:
        raise UsersFileError(f"no user '{name}' in {path}")
    elif args.command == "passwd":
        accounts[name] = Account(name, hash_password(_password(args.password_stdin)), accounts[name].roles)
    elif args.command == "roles":
        accounts[name] = Account(name, accounts[name].hash, tuple(check_roles(args.role)))
    else:
        del accounts[name]
    write(path, accounts)
    return f"{args.command} {name}: done ({path})"


def main() -> None:
    try:
        print(run(sys.argv[1:]))
    except UsersFileError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
