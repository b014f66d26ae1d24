"""Optional bearer tokens per HTTP client, checked after the access list.

With ``[server] bearer_tokens_file`` set, every request but ``GET /health``
(liveness probes) must carry ``Authorization: Bearer <token>`` with one of
the file's tokens, else it is answered 401 in the Sylk shape.  The file has
one client per line, ``NAME TOKEN`` (``#`` starts a comment); NAME only
appears in debug logs, the token never appears in any log or answer.

Tokens are compared with :func:`hmac.compare_digest` against every
configured token (no early exit), so the time taken does not tell how much
of a guess was right, nor which client's token it was close to.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .access import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:  # config imports this module's loader
    from ..config import Settings

logger = logging.getLogger("sidecar.ingress.http")

MIN_TOKEN_LENGTH = 16
OPEN_PATHS = frozenset({"/health"})


class BearerTokenError(ValueError):
    """The tokens file is unusable (the message names the line, never a token)."""


def load_bearer_tokens(path: Path) -> tuple[tuple[str, str], ...]:
    """Read ``NAME TOKEN`` lines.

    Raises:
        BearerTokenError: missing file, malformed line, short or repeated token.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BearerTokenError(f"cannot read {path}: {exc.__class__.__name__}") from None
    tokens: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise BearerTokenError(f"{path} line {number}: expected 'NAME TOKEN'")
        name, token = parts
        if len(token) < MIN_TOKEN_LENGTH:
            raise BearerTokenError(f"{path} line {number}: the token of {name} is shorter than "
                                   f"{MIN_TOKEN_LENGTH} characters")
        if token in seen:
            raise BearerTokenError(f"{path} line {number}: the token of {name} is used twice")
        seen.add(token)
        tokens.append((name, token))
    if not tokens:
        raise BearerTokenError(f"{path}: no token in it")
    return tuple(tokens)


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

    def __init__(self, app: ASGIApp, current_settings: Callable[[], "Settings"]):
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
                from .http import sylk_json

                body = sylk_json(401, "a valid bearer token is required")
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="pushsidecar"'),
                ]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
