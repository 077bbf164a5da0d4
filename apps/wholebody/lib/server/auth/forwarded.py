"""Which peers may say who the client is (``X-Forwarded-For``, ``X-Forwarded-Proto``).

MONAI Label runs uvicorn with its defaults, which believe these headers from 127.0.0.1: any process on
the server's machine could then claim any address, to get past the per-address sign-in throttle or to
write another address into the audit log. Here they are believed only from the reverse proxies the admin
lists (``--conf trusted_proxies``: addresses or networks, comma-separated; none by default), and ignored
from everyone else, loopback included.

uvicorn wraps the app in its ``ProxyHeadersMiddleware`` before the app is loaded, with the list it had
then; the app never sees the peer's own address again. So the middleware's class is pointed at the
admin's list once, at start-up, before the first request.
"""

from __future__ import annotations

import ipaddress
import logging

from uvicorn.middleware import proxy_headers

from lib.conf import Conf, ConfError

logger = logging.getLogger(__name__)

_UVICORNS_OWN = proxy_headers.ProxyHeadersMiddleware.__call__


def trusted_proxies(options: Conf) -> list[str]:
    listed = options.list("trusted_proxies", [])
    for entry in listed:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfError(f"--conf trusted_proxies: {entry[:64]!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)") from None
    return listed


def install(options: Conf) -> list[str]:
    listed = trusted_proxies(options)
    trusted = proxy_headers._TrustedHosts(listed)  # uvicorn's own matching, over the admin's list

    async def believe_listed_proxies_only(self, scope, receive, send):
        self.trusted_hosts = trusted
        return await _UVICORNS_OWN(self, scope, receive, send)

    proxy_headers.ProxyHeadersMiddleware.__call__ = believe_listed_proxies_only
    return listed
