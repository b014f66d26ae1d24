"""Errors and the response value of our HTTP/2 client.

::

    Http2Error
    ├── ConnectError              no connection (TCP, TLS, ALPN, no SETTINGS);
    │                             nothing was sent
    ├── ConnectionNotAvailable    the request was NEVER processed: safe to resend
    │   │                         (GOAWAY above last_stream_id, connection gone
    │   │                         before the request was sent, stream ids used up)
    │   └── StreamRefused         RST_STREAM REFUSED_STREAM (RFC 9113 section 8.7)
    ├── NoResponseAfterGoaway     GOAWAY's last_stream_id covers this stream: the
    │                             server processed it (or may have) but no answer
    │                             came.  NEVER resend: a VoIP push would ring twice
    ├── ConnectionLost            the transport failed (read/write error, EOF,
    │                             ping timeout, local close) after the request
    │                             was handed to the socket, and no answer was in
    │                             what we could still read: its fate is unknown
    ├── NotSentInTime             the push's deadline passed before the request
    │                             could be sent (no stream slot, no connection)
    ├── NoAnswerInTime            sent, but no answer within the grace after the
    │                             deadline; the stream was reset (fate unknown)
    ├── RemoteProtocolError       the server broke the HTTP/2 rules (h2 said so)
    ├── InvalidRequest            the request itself is malformed (header name
    │                             not lower-case, CR/LF in a value...): nothing
    │                             was sent and resending will not help
    └── StreamReset               the server reset this one stream (error_code)

Only :class:`ConnectionNotAvailable` is resent transparently (by
:class:`~sidecar.pns.http2.Http2Endpoint`).  What to do with the others is the
push service's decision.
"""

from __future__ import annotations

import dataclasses


class Http2Error(Exception):
    """Base of every error our HTTP/2 client raises."""


class ConnectError(Http2Error):
    """Could not open a usable connection; no request was sent."""


class ConnectionNotAvailable(Http2Error):
    """The request was never processed by the server: resending it is safe."""


class StreamRefused(ConnectionNotAvailable):
    """The server refused the stream before processing it (REFUSED_STREAM)."""


class NoResponseAfterGoaway(Http2Error):
    """The server announced it processed (or may process) this stream, then went away.

    Resending could deliver the notification twice.
    """


class ConnectionLost(Http2Error):
    """The connection failed while the request was in flight."""


class NotSentInTime(Http2Error):
    """The deadline passed before the request could be sent: nothing was sent."""


class NoAnswerInTime(Http2Error):
    """The request was sent but its answer did not come within the grace after the deadline."""


class RemoteProtocolError(Http2Error):
    """The server violated the HTTP/2 protocol; the connection is closed."""


class InvalidRequest(Http2Error):
    """The request cannot be sent as given (bad headers or path); nothing was sent."""


class StreamReset(Http2Error):
    """The server reset this stream with ``error_code``."""

    def __init__(self, message: str, error_code: int):
        super().__init__(message)
        self.error_code = error_code


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP/2 response (header names are lower-case)."""

    status: int
    headers: dict[str, str]
    body: bytes
