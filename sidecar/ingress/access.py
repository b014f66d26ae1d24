"""The access list (``allowed_hosts``): who may talk to the HTTP API.

Checked by an ASGI middleware before anything else happens (routing,
reading the body), so a refused client costs almost nothing and learns
nothing.  An empty list lets everyone in.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from collections.abc import Awaitable, Callable, Iterable, MutableMapping

from ..config import IPNetwork, Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DENIED_BODY = b'{"code":403,"description":"access denied by access list","data":{}}'


def is_allowed(client_host: str | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``client_host`` (an IP address string) is inside one of ``networks``.

    An empty ``networks`` allows everyone.  With a list, an unknown client
    (no address, e.g. a UNIX socket peer) or an unparsable one is refused.
    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack
    listener reports for IPv4 peers) are compared as the IPv4 address, and
    also as IPv6 so a network written as ``::ffff:10.0.0.0/104`` works.
    """
    networks = tuple(networks)
    if not networks:
        return True
    if not client_host:
        return False
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate.version == network.version and candidate in network
        for candidate in candidates
        for network in networks
    )


class AccessListMiddleware:
    """Refuse clients outside ``settings.allowed_hosts`` with Sylk's 403.

    Args:
        app: the ASGI application to protect.
        current_settings: returns the settings snapshot in force, read per
          connection scope so a configuration reload applies at once.
    """

    def __init__(self, app: ASGIApp, current_settings: Callable[[], Settings]):
        self.app = app
        self.current_settings = current_settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type in ("http", "websocket"):
            networks = self.current_settings().allowed_hosts
            if networks:
                client = scope.get("client")
                if not is_allowed(client[0] if client else None, networks):
                    await _refuse(scope_type, send)
                    return
        await self.app(scope, receive, send)


async def _refuse(scope_type: str, send: Send) -> None:
    if scope_type == "websocket":
        # Policy violation; closing before accepting answers 403 at the HTTP level.
        await send({"type": "websocket.close", "code": 1008})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(DENIED_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": DENIED_BODY})
