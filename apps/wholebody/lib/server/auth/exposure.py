"""The refuse-to-start rule: a server reachable from other machines must have accounts.

As Orthanc refuses to start with remote access on and no user defined: on a loopback address
accounts may be off; on any other address, without ``--conf auth_users``, the server does not
start unless open access is chosen explicitly with ``--conf auth none`` (then warned about at
every start).
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Optional


class ExposedWithoutAccounts(RuntimeError):
    """Listening beyond this machine with no accounts and no explicit opt-out."""


def listen_host() -> Optional[str]:
    """The address given to ``monailabel start_server --host`` (MONAI Label's default 0.0.0.0);
    None when the server was started some other way, and the address cannot be known."""
    if not sys.argv or not sys.argv[0].replace("\\", "/").endswith("monailabel/main.py"):
        return None
    from monailabel.main import Main

    args, _ = Main(actions="start_server").args_parser().parse_known_args(sys.argv[1:])
    return getattr(args, "host", None)


def is_loopback(host: Optional[str]) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def refusal(host: Optional[str]) -> str:
    where = f"listens on {host}" if host else "was not started with `monailabel start_server --host 127.0.0.1`"
    return (
        f"refusing to start: the server {where}, so other machines may reach it, and it has no accounts: "
        "anyone could read every study and change or delete every label. Add users with "
        "`python -m lib.server.auth.users add NAME --role monailabel-admin --users-file FILE` (from apps/wholebody) "
        "and start with `--conf auth_users FILE`; or listen on 127.0.0.1 only; or accept open access "
        "explicitly with `--conf auth none`."
    )
