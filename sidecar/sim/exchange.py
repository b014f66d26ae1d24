"""The vocabulary between the connection drivers and the request handlers.

A driver (HTTP/2 or HTTP/1.1) turns bytes into an :class:`Incoming`, asks the
simulator for a :class:`Plan` and carries it out.  Handlers never see sockets.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

JSON_HEADERS = (("content-type", "application/json; charset=UTF-8"),)


@dataclasses.dataclass(slots=True)
class ConnectionInfo:
    """What a handler may know about the connection a request came on."""

    id: int
    http_version: str  # "2" or "1.1"
    client_topic: str | None = None  # bundle id from a client certificate
    #: set once a request succeeded (APNs raises its stream limit then)
    streams_raised: bool = False


@dataclasses.dataclass(slots=True)
class Incoming:
    """One complete request.

    ``headers`` keeps every field (lower-cased names, in order) so duplicate
    headers stay visible; ``header`` maps each name to its last value.
    """

    method: str
    path: str
    headers: list[tuple[str, str]]
    header: dict[str, str]
    body: bytes
    conn: ConnectionInfo
    stream_id: int = 0
    duplicate_headers: bool = False
    _document: Any = dataclasses.field(default=None, repr=False)

    def document(self) -> Any:
        """The body parsed as JSON (cached).

        Raises:
            ValueError: the body is not JSON.
        """
        if self._document is None:
            self._document = json.loads(self.body)
        return self._document

    @classmethod
    def build(cls, method: str, path: str, fields: list[tuple[str, str]], body: bytes,
              conn: ConnectionInfo, stream_id: int = 0) -> Incoming:
        header: dict[str, str] = {}
        duplicate = False
        for name, value in fields:
            if name in header:
                duplicate = True
            header[name] = value
        return cls(method, path, fields, header, body, conn, stream_id, duplicate)


@dataclasses.dataclass(slots=True)
class Reply:
    """An HTTP answer plus what the record should say about it."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    reason: str | None = None  # the service's reason/errorCode, for records

    @classmethod
    def json(cls, status: int, document: Any, *, headers: tuple[tuple[str, str], ...] = (),
             reason: str | None = None) -> Reply:
        body = json.dumps(document, separators=(",", ":")).encode()
        return cls(status, JSON_HEADERS + headers, body, reason)


@dataclasses.dataclass(slots=True)
class GoAway:
    last_stream_id: int
    error_code: int = 0
    debug_data: bytes = b""


@dataclasses.dataclass(slots=True)
class Plan:
    """What a driver must do for one request.

    Exactly one of ``reply``, ``reset`` and ``drop`` applies; ``reply`` None
    with neither means "no answer" (a stream refused by GOAWAY).
    """

    reply: Reply | None
    delay: float = 0.0
    reset: int | None = None
    drop: bool = False
    #: after the answer left, cut the connection abruptly (TCP RST)
    cut: bool = False
    goaway: GoAway | None = None
    #: raise this connection's SETTINGS_MAX_CONCURRENT_STREAMS to this value
    raise_streams: int | None = None
