"""One persistent HTTP/2 connection per push-service endpoint, kept alive.

Theory of operation
-------------------
APNs and FCM want few long-lived connections (APNs treats connection churn as
abuse), and one HTTP/2 connection carries ~1000 concurrent streams, so an
endpoint (one set of credentials on one host) owns ONE live connection.  It is
opened on the first request, replaced when it stops being available (GOAWAY,
broken transport, stream ids used up) and reopened with backoff when
connecting fails: while in backoff, requests fail fast with ConnectError and
the dispatcher, which owns retries and deadlines, decides when to try again.

A request that fails with :class:`ConnectionNotAvailable` was never processed
by the server (streams above GOAWAY's ``last_stream_id``, REFUSED_STREAM, a
connection that closed before the request went out), so it is resent on the
next connection here, invisibly to the caller.  Every other error is the
caller's to judge: this is how a GOAWAY resends exactly the unprocessed
streams and never the others.

A replaced connection that still has streams in flight is left draining (at
most one; an older draining connection is closed when a newer one retires).
"""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Awaitable, Callable

import trio

from ._h2_connection import Http2Connection
from ._h2_errors import ConnectError, ConnectionNotAvailable, NotSentInTime, Response
from ._h2_protocol import Header
from .backoff import backoff_delay

logger = logging.getLogger("sidecar.pns.http2")

#: opens a started connection whose tasks run in the given nursery
Connector = Callable[[trio.Nursery], Awaitable[Http2Connection]]


class Http2Endpoint:
    """Owner of the connection to one endpoint; see the module docstring.

    Args:
        connect: opens a new, started :class:`Http2Connection` (for TLS: a
            ``functools.partial`` of :func:`open_http2_connection`); raises
            ConnectError on failure.
        nursery: where connections run their background tasks.
        name: a label for log lines.
        max_resends: how many times one request may be resent after
            ConnectionNotAvailable before the error reaches the caller.
        backoff: ``(failures) -> seconds`` before the next connect attempt.
    """

    def __init__(
        self,
        connect: Connector,
        nursery: trio.Nursery,
        *,
        name: str = "",
        max_resends: int = 3,
        backoff: Callable[[int], float] = lambda failures: backoff_delay(failures, None, base=0.5, cap=30.0),
    ):
        self._connect = connect
        self._nursery = nursery
        self._name = name
        self._max_resends = max_resends
        self._backoff = backoff
        self._live: Http2Connection | None = None
        self._draining: Http2Connection | None = None
        self._connect_lock = trio.Lock()
        self._failures = 0
        self._next_attempt_at = -float("inf")
        self._last_connect_error: ConnectError | None = None
        self._closed = False
        self._connects = 0
        self._resends = 0

    async def request(
        self, method: str, path: str, headers: list[Header], body: bytes = b"", *,
        send_by: float = float("inf"),
    ) -> Response:
        """Send one request, resending it while it was provably never processed.

        ``send_by``: the push's deadline (trio clock), see
        :meth:`Http2Connection.request`; waiting for a connection stops there too.

        Raises:
            NotSentInTime: the deadline passed before it could be sent.
            ConnectError: no connection could be opened (or in backoff).
            ConnectionNotAvailable: still unprocessed after ``max_resends``.
            Http2Error: any other failure, as raised by the connection.
        """
        resends = 0
        while True:
            connection = self._live
            if connection is None or not connection.is_available():
                connection = None
                with trio.move_on_at(send_by):
                    connection = await self._connection()
                if connection is None:
                    raise NotSentInTime(f"{self._name}: no connection before the deadline")
            try:
                return await connection.request(method, path, headers, body, send_by=send_by)
            except ConnectionNotAvailable:
                if resends >= self._max_resends:
                    raise
                resends += 1
                self._resends += 1

    async def _connection(self) -> Http2Connection:
        """The live connection, opening a new one if needed (one opener at a time)."""
        async with self._connect_lock:
            if self._closed:
                raise ConnectError(f"{self._name}: endpoint closed")
            live = self._live
            if live is not None and live.is_available():
                return live
            if live is not None:
                self._retire(live)
            now = trio.current_time()
            if now < self._next_attempt_at:
                raise ConnectError(
                    f"{self._name}: not reconnecting for {self._next_attempt_at - now:.1f}s "
                    f"after {self._failures} failure(s): {self._last_connect_error}"
                )
            try:
                connection = await self._connect(self._nursery)
            except ConnectError as exc:
                self._failures += 1
                self._last_connect_error = exc
                self._next_attempt_at = trio.current_time() + self._backoff(self._failures)
                logger.warning("http2 %s: connect failed (%d in a row): %s", self._name, self._failures, exc)
                raise
            self._failures = 0
            self._connects += 1
            self._live = connection
            logger.info("http2 %s: connected (connection %d)", self._name, self._connects)
            return connection

    def _retire(self, connection: Http2Connection) -> None:
        self._live = None
        if connection.is_closed():
            return
        older, self._draining = self._draining, connection
        connection.start_draining()
        if older is not None and not older.is_closed():
            self._nursery.start_soon(older.aclose)

    async def aclose(self) -> None:
        """Close the connections; in-flight requests fail with ConnectionLost."""
        self._closed = True
        for connection in (self._live, self._draining):
            if connection is not None:
                await connection.aclose()
        self._live = self._draining = None

    def statistics(self) -> dict[str, Any]:
        live = self._live
        return {
            "connected": live is not None and live.is_available(),
            "in_flight": (live.in_flight if live else 0)
            + (self._draining.in_flight if self._draining and not self._draining.is_closed() else 0),
            "connects": self._connects,
            "connect_failures": self._failures,
            "resends": self._resends,
        }
