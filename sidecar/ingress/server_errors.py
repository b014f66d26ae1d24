"""Sylk-shaped bodies for the errors Hypercorn answers before our application runs.

Why: Hypercorn answers requests it cannot parse (h11: 400 bad request line
or headers, 431 headers too large, 501 unsupported transfer coding) and a
few stream errors (404 for a wrong server name, 500 when the application
ended without answering) with an empty body.  API clients expect every
answer in the ``{code, description, data}`` form.

Hypercorn has no hook for those answers, so :func:`install` replaces its two
``_send_error_response`` methods (``hypercorn.protocol.h11.H11Protocol`` and
``hypercorn.protocol.http_stream.HTTPStream``) with versions that send the
same status, ``connection: close`` and a Sylk JSON body.  Hypercorn is
pinned by setup.cfg's range and ``tests/unit/test_server_errors.py`` checks
the bodies on a real server, so an upgrade that moves these methods fails a
test instead of silently going back to empty bodies.

What cannot be shaped (the README lists it): an HTTP/2 connection whose
preface or frames are invalid is closed with a GOAWAY (there is no request
to answer), and a client that stops sending mid-request is disconnected.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from itertools import chain
from time import time
from typing import Any

from .answers import sylk_json

logger = logging.getLogger("sidecar.ingress.http")

#: what the client did wrong, per status Hypercorn answers on its own
DESCRIPTIONS = {
    400: "malformed HTTP request",
    404: "unknown server name",
    408: "request timed out",
    413: "request too large",
    414: "request line too long",
    431: "request header fields too large",
    500: "internal server error",
    501: "unsupported HTTP feature (transfer coding or method)",
}

_installed = False


def error_body(status: int) -> bytes:
    """The Sylk answer for a status Hypercorn produced itself."""
    description = DESCRIPTIONS.get(status)
    if description is None:
        try:
            description = HTTPStatus(status).phrase.lower()
        except ValueError:
            description = "error"
    return sylk_json(status, description)


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]


def install() -> None:
    """Give Hypercorn's own error answers a Sylk body (idempotent)."""
    global _installed
    if _installed:
        return
    import h11
    from hypercorn.protocol import h11 as h11_protocol
    from hypercorn.protocol import http_stream
    from hypercorn.protocol.events import Body, EndBody, Response
    from hypercorn.protocol.http_stream import ASGIHTTPState

    async def h11_error_response(self: Any, status_code: int) -> None:
        body = error_body(status_code)
        headers = list(chain(_headers(body), self.config.response_headers("h11")))
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    async def stream_error_response(self: Any, status_code: int) -> None:
        body = error_body(status_code)
        await self.send(Response(stream_id=self.stream_id, headers=_headers(body), status_code=status_code))
        await self.send(Body(stream_id=self.stream_id, data=body))
        await self.send(EndBody(stream_id=self.stream_id))
        self.state = ASGIHTTPState.CLOSED
        await self.config.log.access(
            self.scope, {"status": status_code, "headers": []}, time() - self.start_time
        )

    for owner, replacement in ((h11_protocol.H11Protocol, h11_error_response),
                               (http_stream.HTTPStream, stream_error_response)):
        if not hasattr(owner, "_send_error_response"):
            logger.warning("hypercorn %s has no _send_error_response: its own errors stay empty", owner)
            continue
        owner._send_error_response = replacement  # type: ignore[method-assign]
    _installed = True
