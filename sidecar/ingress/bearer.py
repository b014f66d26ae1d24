"""Optional bearer tokens per HTTP client, checked after the access list.

With ``[server] bearer_tokens_file`` set, every request but ``GET /health``
(liveness probes) must carry ``Authorization: Bearer <token>`` with one of
the file's tokens, else it is answered 401 in the Sylk shape.  The file
(read by :func:`sidecar.key_files.load_bearer_tokens`) has one client per
line, ``NAME TOKEN`` (``#`` starts a comment); NAME only appears in debug logs, the token never
appears in any log or answer.

Tokens are compared with :func:`hmac.compare_digest` against every
configured token (no early exit), so the time taken does not tell how much
of a guess was right, nor which client's token it was close to.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from ..config import Settings
from .access import ASGIApp, Receive, Scope, Send
from .answers import sylk_json

logger = logging.getLogger("sidecar.ingress.http")

OPEN_PATHS = frozenset({"/health"})


def client_of(authorization: bytes | None, tokens: tuple[tuple[str, str], ...]) -> str | None:
    """The client NAME whose token ``authorization`` carries, or None (constant time per token)."""
    if not authorization or authorization[:7].lower() != b"bearer ":
        return None
    offered = authorization[7:].strip()
    found = None
    for name, token in tokens:
        if hmac.compare_digest(offered, token.encode()):
            found = name
    return found


class BearerTokenMiddleware:
    """Answer 401 to requests without a configured bearer token (when tokens are configured)."""

    def __init__(self, app: ASGIApp, current_settings: Callable[[], Settings]):
        self.app = app
        self.current_settings = current_settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tokens = self.current_settings().bearer_tokens
        if tokens and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value
                    break
            if client_of(authorization, tokens) is None:
                body = sylk_json(401, "a valid bearer token is required")
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="pushsidecar"'),
                ]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
