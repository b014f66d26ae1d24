"""One HTTP/2 client connection: the h2 state machine driven by trio.

Theory of operation
-------------------
``h2.connection.H2Connection`` is sans-IO and not safe to share, but trio runs
one task at a time, so every synchronous call into it is atomic; only the
socket needs ownership.  Three background tasks live in a private nursery
(inside the nursery the caller gives to :meth:`Http2Connection.start`):

- the *reader* reads, feeds h2 and turns its events into per-stream results;
- the *writer* sleeps until something is queued in h2's output buffer, then
  calls :meth:`Http2Connection._flush`, the only code that writes to the
  socket (``data_to_send()`` + ``send_all`` under one lock).  Requests never
  write themselves: they queue frames and wake the writer, so the frames of
  every request made during one scheduling round go out in one ``send_all``;
- the *pinger* sends a PING when nothing was received for ``ping_interval``
  seconds and closes the connection if the ack does not come back in time.

Each request owns one ``_Stream`` record keyed by stream id and waits on its
event.  A :class:`~sidecar.pns._h2_limiter.StreamLimiter` follows the server's
SETTINGS_MAX_CONCURRENT_STREAMS.  A body that does not fit the flow-control
windows waits in a FIFO queue of pending bodies, which is pumped (no await,
no task of its own) when a request is opened and after the reader handled
what came in (WINDOW_UPDATE, SETTINGS): every body the new window allows goes
out in the same scheduling round, where parked senders would take one round
each.  Whatever ends a request (answer, error,
cancellation), its ``finally`` releases the slot and, when h2 still considers
the stream open, queues RST_STREAM(CANCEL).  That is synchronous (no await),
so it cannot be interrupted and needs no shield; the writer sends it.

Failure rules (see :mod:`sidecar.pns._h2_errors`): a failed *write* does not
close the connection at once.  The peer may have answered streams just before
it cut the connection, and those answers sit in the kernel's receive buffer:
the writer stops, the reader goes on until EOF, a read error or
``_READ_AFTER_WRITE_FAILURE`` seconds, and every answer it finds is delivered
(under TLS, :class:`~sidecar.pns._h2_transport.SendLatch` keeps the failed
write from breaking the TLS stream).
Then the connection closes and each stream still pending fails according to
what left this process: a stream whose END_STREAM was never handed to the
socket cannot have been processed (:class:`ConnectionNotAvailable`, resent
transparently); one that was handed to it has an unknown fate
(:class:`ConnectionLost`; the dispatcher may resend it once).  Every other
transport error (read error, EOF, PING timeout) closes at once with the same
split.  A GOAWAY fails
streams above ``last_stream_id`` at once as never processed (resendable).  The
server still owes the answers of the streams at or below it (RFC 9113 section
6.8), so the connection stops taking new streams, keeps reading, delivers
those answers as they come and closes when the last one has ended.  h2 would
refuse every frame after a GOAWAY; :class:`ClientH2Connection` keeps its state
machine open for them.  If the connection ends before such an answer, that
stream fails as processed-without-answer (:class:`NoResponseAfterGoaway`,
never resent: a VoIP push would ring twice).
"""

from __future__ import annotations

import enum
import logging
import math
from typing import Any
from collections.abc import Callable

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ._h2_errors import (
    ConnectError,
    ConnectionLost,
    ConnectionNotAvailable,
    Http2Error,
    InvalidRequest,
    NoAnswerInTime,
    NoResponseAfterGoaway,
    NotSentInTime,
    RemoteProtocolError,
    Response,
    StreamRefused,
    StreamReset,
)
from ._h2_limiter import StreamLimiter
from ._h2_protocol import ClientH2Connection, Header, check_headers, decode_response_headers

logger = logging.getLogger("sidecar.pns.http2")

_RECEIVE_SIZE = 65536
# Our receive window for the whole connection; responses are small, but many
# error bodies in flight at once should never stall the connection.
_CONNECTION_WINDOW = 16 * 1024 * 1024
_CLOSE_GRACE = 1.0  # seconds we give our GOAWAY to leave on aclose()
# After a write failed: how long the reader may still collect answers the
# kernel has buffered (they are there at once; this only bounds a peer that
# stopped reading but still sends).
_READ_AFTER_WRITE_FAILURE = 1.0
_METHODS = {"POST": b"POST", "GET": b"GET"}

class ConnectionState(enum.Enum):
    ACTIVE = "active"  # accepts new streams
    DRAINING = "draining"  # no new streams; closes when the last one ends
    CLOSED = "closed"  # every stream failed; the transport is (being) closed


class _Stream:
    """What one request knows about its stream."""

    __slots__ = ("stream_id", "headers", "chunks", "done", "error", "local_ended", "body", "sent", "end_seq")

    def __init__(self, stream_id: int):
        self.stream_id = stream_id
        self.headers: list[Header] = []
        self.chunks: list[bytes] = []
        self.done = trio.Event()  # set when the response is complete or the stream failed
        self.error: Http2Error | None = None
        self.local_ended = False  # END_STREAM queued by us
        self.body = b""  # while waiting for flow-control window: the whole body
        self.sent = 0  # bytes of ``body`` already queued
        self.end_seq = 0  # order in which END_STREAM was queued (0: not yet)


class Http2Connection:
    """An HTTP/2 client connection over any ``trio.abc.Stream``.

    Create it on an open (TLS) stream, call :meth:`start`, then make
    concurrent :meth:`request` calls.  For TLS, use
    :func:`open_http2_connection`.

    Args:
        stream: the transport; for TLS it must have negotiated ALPN ``h2``.
        authority: the ``:authority`` pseudo-header (``host`` or ``host:port``).
        max_streams: our own cap on concurrent streams; the effective limit
            is the smaller of this and the server's MAX_CONCURRENT_STREAMS.
        ping_interval: seconds without receiving anything before we PING;
            0 disables pings.
        ping_timeout: seconds to wait for the PING ack before giving up.
        write_timeout: seconds one ``send_all`` may block before the
            connection counts as dead (the peer stopped reading).
        answer_grace: seconds past a request's ``send_by`` deadline that its
            answer is still awaited once it was sent.
        send_latch: the :class:`~sidecar.pns._h2_transport.SendLatch` under a
            TLS stream, if any: it records a failed write instead of letting
            it break the TLS stream, so buffered answers can still be read.
        name: a label for log lines.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        authority: str,
        max_streams: int = 1000,
        ping_interval: float = 60.0,
        ping_timeout: float = 10.0,
        write_timeout: float = 30.0,
        answer_grace: float = 5.0,
        send_latch: Any = None,
        name: str = "",
    ):
        self._stream = stream
        self._name = name or authority
        self._streams: dict[int, _Stream] = {}
        self._h2 = ClientH2Connection(self._streams.__len__)
        self._state = ConnectionState.ACTIVE
        self._close_reason = ""
        self._goaway: tuple[int, int] | None = None  # (last_stream_id, error_code)
        self._max_streams = max_streams
        # Until the server's SETTINGS arrive we assume the RFC's suggested minimum.
        self._limiter = StreamLimiter(min(100, max_streams))
        # Constant pseudo-headers as bytes: h2 would encode them for every request.
        self._pseudo_headers = ((b":scheme", b"https"), (b":authority", authority.encode()))
        self._write_lock = trio.Lock()
        self._write_wanted = trio.Event()
        # Bodies waiting for flow-control window, first come first served.
        self._pending_bodies: dict[int, _Stream] = {}
        self._settings_received = trio.Event()
        self._ping_acked: trio.Event | None = None
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._write_timeout = write_timeout
        self._answer_grace = answer_grace
        self._send_latch = send_latch
        # END_STREAMs queued so far, and how many of them data_to_send() handed
        # to the socket: a stream whose end_seq is above _handed_seq never left.
        self._end_seq = 0
        self._handed_seq = 0
        self._write_error: BaseException | None = None
        self._reader_scope = trio.CancelScope()
        self._last_received = -math.inf
        self._cancel_scope = trio.CancelScope()
        self._finished = trio.Event()
        self._started = False
        self._closing = False  # aclose() called: the server hanging up is expected
        self._requests = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            h2.events.ResponseReceived: self._on_response,
            h2.events.TrailersReceived: self._on_trailers,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_stream_reset,
            h2.events.RemoteSettingsChanged: self._on_remote_settings,
            h2.events.PingAckReceived: self._on_ping_ack,
            h2.events.ConnectionTerminated: self._on_goaway,
        }

    # ---- life cycle -------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Send the connection preface and start the background tasks in ``nursery``."""
        if self._started:
            raise RuntimeError("Http2Connection.start() called twice")
        self._started = True
        await nursery.start(self._run)

    async def wait_remote_settings(self) -> None:
        """Wait for the server's first SETTINGS frame.

        Raises:
            ConnectError: the connection closed before it came.
        """
        await self._settings_received.wait()
        if self._state is ConnectionState.CLOSED:
            raise ConnectError(f"{self._name}: connection closed before SETTINGS: {self._close_reason}")

    async def aclose(self) -> None:
        """Send GOAWAY, fail pending streams with ConnectionLost, close the transport."""
        self._closing = True
        if self._state is not ConnectionState.CLOSED and self._started:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE):
                self._h2.close_connection()
                await self._flush()
        self._close("closed locally", ConnectionLost, routine=True)
        if self._started:
            with trio.CancelScope(shield=True):
                await self._finished.wait()
        else:
            await trio.aclose_forcefully(self._stream)

    def start_draining(self) -> None:
        """Accept no new streams; close once the in-flight ones have ended."""
        if self._state is ConnectionState.ACTIVE:
            self._state = ConnectionState.DRAINING
            if not self._streams:
                self._close("drained", ConnectionLost, routine=True)

    # ---- predicates for the owner ----------------------------------------

    def is_available(self) -> bool:
        """True if a new request may be sent on this connection."""
        return self._state is ConnectionState.ACTIVE

    def is_closed(self) -> bool:
        return self._state is ConnectionState.CLOSED

    @property
    def in_flight(self) -> int:
        """Requests currently holding a stream."""
        return len(self._streams)

    @property
    def goaway(self) -> tuple[int, int] | None:
        """``(last_stream_id, error_code)`` of the server's GOAWAY, if one came."""
        return self._goaway

    def statistics(self) -> dict[str, Any]:
        """An immutable-by-convention snapshot for metrics and tests."""
        return {
            "state": self._state.value,
            "in_flight": len(self._streams),
            "waiting_for_stream": self._limiter.waiting,
            "max_concurrent_streams": self._limiter.capacity,
            "requests": self._requests,
            "close_reason": self._close_reason,
        }

    # ---- requests ---------------------------------------------------------

    async def request(
        self, method: str, path: str, headers: list[Header], body: bytes = b"", *,
        send_by: float = math.inf,
    ) -> Response:
        """Send one request and wait for its complete response.

        ``headers`` are regular headers with lower-case names (checked, not
        normalized); the pseudo-headers are added here.  Checkpoints;
        cancellation resets the stream.

        ``send_by`` (trio clock) is the push's deadline: a request that could
        not be opened by then raises :class:`NotSentInTime`; once sent, its
        answer is awaited until ``send_by + answer_grace`` (what the service
        says is the truth, even a little late), then :class:`NoAnswerInTime`.

        Raises:
            ConnectionNotAvailable: never processed (safe to resend).
            NoResponseAfterGoaway: processed or maybe processed; never resend.
            ConnectionLost, RemoteProtocolError: the connection failed after
                the request was sent; its fate is unknown.
            StreamReset: the server reset this stream.
            InvalidRequest: h2 refused the headers; nothing was sent.
            NotSentInTime, NoAnswerInTime: see ``send_by``.
        """
        if self._state is not ConnectionState.ACTIVE:
            raise self._not_available()
        if trio.current_time() >= send_by:
            raise NotSentInTime(f"{self._name}: the deadline passed before the request was sent")
        acquired = False
        with trio.move_on_at(send_by):
            await self._limiter.acquire()
            acquired = True
        if not acquired:
            raise NotSentInTime(f"{self._name}: no free stream before the deadline")
        try:
            if self._state is not ConnectionState.ACTIVE:
                raise self._not_available()
            record = self._open_stream(method, path, headers, body)
            try:
                # On the wire now: the deadline no longer cancels, it bounds the wait.
                with trio.move_on_at(send_by + self._answer_grace):
                    await record.done.wait()
            finally:
                self._end_stream(record)
            if not record.done.is_set():
                raise NoAnswerInTime(
                    f"{self._name}: stream {record.stream_id}: no answer {self._answer_grace:g}s "
                    "after the deadline; it may have been delivered"
                )
            if record.error is not None:
                raise record.error
            headers_dict = dict(record.headers)
            return Response(int(headers_dict.get(":status", 0)), headers_dict, b"".join(record.chunks))
        finally:
            self._limiter.release()

    def _open_stream(self, method: str, path: str, headers: list[Header], body: bytes) -> _Stream:
        """Queue HEADERS (and the body when it fits the window) for a new stream."""
        check_headers(path, headers)
        h2c = self._h2
        try:
            stream_id = h2c.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError as exc:
            self.start_draining()
            raise ConnectionNotAvailable(f"{self._name}: stream ids exhausted") from exc
        request_headers: list[tuple[bytes | str, bytes | str]] = [
            (b":method", _METHODS.get(method) or method.encode()), *self._pseudo_headers,
            (b":path", path.encode()), *headers]
        try:
            h2c.send_headers(stream_id, request_headers, end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            # Nothing of this stream reached the socket yet (no await since).
            closed = h2c.state_machine.state is h2.connection.ConnectionState.CLOSED
            if closed or isinstance(exc, h2.exceptions.TooManyStreamsError):
                raise ConnectionNotAvailable(f"{self._name}: cannot open a stream: {exc}") from exc
            # check_headers() should have caught this.  h2 validates while it
            # encodes, so the HPACK table may now hold fields the server never
            # saw: no new stream may use this connection.  h2 also left an idle
            # stream behind (RST_STREAM on an idle stream is not allowed).
            h2c.streams.pop(stream_id, None)
            self.start_draining()
            raise InvalidRequest(f"{self._name}: h2 refused the request: {exc}") from exc
        record = _Stream(stream_id)
        self._streams[stream_id] = record
        self._requests += 1
        if not body:
            self._ended(record)
        elif not self._pending_bodies and len(body) <= min(
            h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size
        ):
            h2c.send_data(stream_id, body, end_stream=True)
            self._ended(record)
        else:
            record.body = body
            self._pending_bodies[stream_id] = record
            self._pump_bodies()
        self._wake_writer()
        return record

    def _ended(self, record: _Stream) -> None:
        """Note that END_STREAM of ``record`` is queued (in order, for :meth:`_flush`)."""
        record.local_ended = True
        self._end_seq += 1
        record.end_seq = self._end_seq

    def _pump_bodies(self) -> None:
        """Queue as much of the pending bodies as the flow-control windows allow.

        First come, first served on the connection window; a stream whose own
        window is shut is passed over until its WINDOW_UPDATE.  Never awaits.
        """
        h2c = self._h2
        pending = self._pending_bodies
        frame_size = h2c.max_outbound_frame_size
        finished: list[int] = []  # removed after the walk; it stops early, no copy of the queue
        for stream_id, record in pending.items():
            if record.done.is_set():  # reset, early answer or connection gone
                finished.append(stream_id)
                continue
            body, total = record.body, len(record.body)
            try:
                while (window := min(h2c.local_flow_control_window(stream_id), frame_size)) > 0:
                    offset = record.sent
                    chunk = body[offset : offset + window]
                    record.sent = offset + len(chunk)
                    h2c.send_data(stream_id, chunk, end_stream=record.sent >= total)
                    if record.sent >= total:
                        break
            except h2.exceptions.ProtocolError as exc:  # h2 closed the stream under us
                finished.append(stream_id)
                record.error = StreamReset(
                    f"{self._name}: stream {stream_id} closed before its body was sent: {exc}",
                    int(h2.errors.ErrorCodes.STREAM_CLOSED),
                )
                record.done.set()
                continue
            if record.sent >= total:
                finished.append(stream_id)
                self._ended(record)
                record.body = b""
            elif h2c.outbound_flow_control_window <= 0:
                break  # the rest waits for the connection's WINDOW_UPDATE
        for stream_id in finished:
            del pending[stream_id]
        self._wake_writer()

    def _end_stream(self, record: _Stream) -> None:
        """Forget the stream; reset it if h2 still considers it open.  Never awaits."""
        del self._streams[record.stream_id]
        self._pending_bodies.pop(record.stream_id, None)
        if self._state is ConnectionState.CLOSED:
            return
        beyond_goaway = self._goaway is not None and record.stream_id > self._goaway[0]
        if not beyond_goaway and not (record.local_ended and record.done.is_set() and record.error is None):
            try:
                self._h2.reset_stream(record.stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.H2Error:
                pass  # already closed on the h2 side (reset by the peer, answered...)
            else:
                self._wake_writer()
        if self._state is ConnectionState.DRAINING and not self._streams:
            self._close(self._drained_reason(), ConnectionLost, routine=True)

    def _drained_reason(self) -> str:
        if self._write_error is not None:
            return f"write failed: {self._write_error!r}; every stream ended"
        if self._goaway is None:
            return "drained"
        return f"drained after GOAWAY (last_stream_id {self._goaway[0]}, error_code {self._goaway[1]})"

    def _not_available(self) -> ConnectionNotAvailable:
        return ConnectionNotAvailable(
            f"{self._name}: connection {self._state.value}"
            + (f": {self._close_reason}" if self._close_reason else "")
        )

    # ---- closing ----------------------------------------------------------

    def _close(
        self,
        reason: str,
        error_type: type[Http2Error],
        cause: BaseException | None = None,
        *,
        routine: bool = False,
    ) -> None:
        """Close once: fail every pending stream with a fresh ``error_type``.

        ``routine`` closes (ours, draining, a graceful GOAWAY) log at INFO,
        the others at WARNING.
        """
        if self._state is ConnectionState.CLOSED:
            return
        self._state = ConnectionState.CLOSED
        self._close_reason = reason
        for stream_id, record in self._streams.items():
            if not record.done.is_set():
                if self._goaway is not None and stream_id <= self._goaway[0]:
                    # Promised processed by the GOAWAY: its answer is lost, not its push.
                    record.error = NoResponseAfterGoaway(
                        f"{self._name}: stream {stream_id} unanswered after GOAWAY "
                        f"(last_stream_id {self._goaway[0]}): {reason}"
                    )
                elif not record.end_seq or record.end_seq > self._handed_seq:
                    # Its END_STREAM never reached the socket: no server processed it.
                    record.error = ConnectionNotAvailable(f"{self._name}: not sent before: {reason}")
                else:
                    record.error = error_type(f"{self._name}: {reason}")
                record.error.__cause__ = cause
                record.done.set()
        # Wake everyone who waits for something this connection will never give.
        self._limiter.resize(2**31)
        self._pending_bodies.clear()
        self._settings_received.set()
        if self._ping_acked is not None:
            self._ping_acked.set()
        self._cancel_scope.cancel()
        log = logger.info if routine or self._closing else logger.warning
        log("http2 %s: connection closed: %s", self._name, reason)

    # ---- background tasks -------------------------------------------------

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._last_received = trio.current_time()
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._writer)
                    if self._ping_interval > 0:
                        nursery.start_soon(self._pinger)
                    self._wake_writer()
                    task_status.started()
        except Exception as exc:  # a bug in a handler must not take the service down
            logger.exception("http2 %s: internal error", self._name)
            self._close(f"internal error: {exc!r}", ConnectionLost, exc)
        finally:
            self._close("connection closed", ConnectionLost, routine=True)  # cancelled: shutting down
            await trio.aclose_forcefully(self._stream)
            self._finished.set()

    async def _reader(self) -> None:
        with self._reader_scope:
            await self._read_until_closed()
        if self._reader_scope.cancelled_caught and self._write_error is not None:
            # The grace after a write failure is over: what was buffered has been read.
            self._close(f"write failed: {self._write_error!r}", ConnectionLost, self._write_error)

    async def _read_until_closed(self) -> None:
        h2c = self._h2
        handlers = self._handlers
        while True:
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._close(self._after_write_failure(f"read failed: {exc!r}"), ConnectionLost, exc)
                return
            if not data:
                self._close(self._after_write_failure("server closed the connection"), ConnectionLost)
                return
            self._last_received = trio.current_time()
            try:
                events = h2c.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self._close(f"protocol error: {exc}", RemoteProtocolError, exc)
                return
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(event)
                    if self._state is ConnectionState.CLOSED:
                        return
            if self._pending_bodies:  # after all events: resets are known by now
                self._pump_bodies()
            self._wake_writer()  # acks, window updates, PING and SETTINGS acks

    def _after_write_failure(self, reason: str) -> str:
        if self._write_error is None:
            return reason
        return f"write failed: {self._write_error!r}; then {reason}"

    async def _writer(self) -> None:
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            await self._flush()

    async def _flush(self) -> None:
        """Write everything h2 has queued.  The only code that writes to the socket."""
        async with self._write_lock:
            while self._write_error is None:
                queued_ends = self._end_seq
                data = self._h2.data_to_send()
                if not data:
                    return
                # From here these END_STREAMs may reach the server: fate unknown on failure.
                self._handed_seq = queued_ends
                try:
                    with trio.fail_after(self._write_timeout):
                        await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
                    self._write_failed(exc)
                    return
                latch = self._send_latch
                if latch is not None and latch.error is not None:
                    self._write_failed(latch.error)
                    return

    def _write_failed(self, exc: BaseException) -> None:
        """Stop writing; let the reader collect the answers already received (bounded)."""
        if self._state is ConnectionState.CLOSED or self._write_error is not None:
            return
        self._write_error = exc
        if self._closing or not self._streams:
            self._close(f"write failed: {exc!r}", ConnectionLost, exc)
            return
        if self._state is ConnectionState.ACTIVE:
            self._state = ConnectionState.DRAINING
        self._reader_scope.deadline = trio.current_time() + _READ_AFTER_WRITE_FAILURE
        logger.warning("http2 %s: write failed (%r); reading the answers already received", self._name, exc)

    async def _pinger(self) -> None:
        payload = 0
        while True:
            await trio.sleep_until(self._last_received + self._ping_interval)
            if trio.current_time() < self._last_received + self._ping_interval:
                continue  # something arrived meanwhile: not idle
            payload += 1
            self._ping_acked = acked = trio.Event()
            self._h2.ping(payload.to_bytes(8, "big"))
            self._wake_writer()
            with trio.move_on_after(self._ping_timeout):
                await acked.wait()
            if not acked.is_set():
                self._close(f"no PING ack within {self._ping_timeout}s", ConnectionLost)
                return

    def _wake_writer(self) -> None:
        self._write_wanted.set()

    # ---- h2 events (called by the reader, never await) --------------------

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        # Checked even for forgotten streams: a malformed block is a protocol error.
        headers = self._decode_headers(event.headers, trailers=False)
        record = self._streams.get(event.stream_id)
        if record is not None and headers is not None:
            record.headers = headers

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        headers = self._decode_headers(event.headers, trailers=True)
        record = self._streams.get(event.stream_id)
        if record is not None and headers is not None:
            record.headers = [*record.headers, *headers]

    def _decode_headers(self, raw: list[Any], *, trailers: bool) -> list[Header] | None:
        """The validated, decoded block; None once a malformed one closed the connection."""
        try:
            return decode_response_headers(raw, trailers=trailers)
        except h2.exceptions.ProtocolError as exc:
            # What h2's own inbound validation would do: fail the connection.
            self._close(f"protocol error: {exc}", RemoteProtocolError, exc)
            return None

    def _on_data(self, event: h2.events.DataReceived) -> None:
        # Acknowledge even for forgotten streams: the connection window counts it too.
        if event.flow_controlled_length:
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        record = self._streams.get(event.stream_id)
        if record is not None:
            record.chunks.append(event.data)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        record = self._streams.get(event.stream_id)
        if record is not None:
            record.done.set()

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        record = self._streams.get(event.stream_id)
        if record is None or record.done.is_set():
            return
        code = event.error_code
        if code == h2.errors.ErrorCodes.REFUSED_STREAM:
            record.error = StreamRefused(f"{self._name}: stream {event.stream_id} refused")
        else:
            record.error = StreamReset(f"{self._name}: stream {event.stream_id} reset by server: {code!r}",
                                       int(code or 0))
        record.done.set()

    def _on_remote_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        max_streams = changed.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
        if max_streams is not None or not self._settings_received.is_set():
            limit = self._h2.remote_settings.max_concurrent_streams
            self._limiter.resize(min(limit, self._max_streams))
        # A new INITIAL_WINDOW_SIZE is used by the reader's pump after the events.
        self._settings_received.set()

    def _on_ping_ack(self, event: h2.events.PingAckReceived) -> None:
        if self._ping_acked is not None:
            self._ping_acked.set()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id or 0
        if self._goaway is not None:
            last = min(last, self._goaway[0])  # a later GOAWAY may only lower it
        code = int(event.error_code or 0)
        self._goaway = (last, code)
        detail = (event.additional_data or b"")[:200].decode("utf-8", "replace")
        reason = f"GOAWAY error_code={code} last_stream_id={last} {detail}".rstrip()
        awaited = 0
        for stream_id, record in self._streams.items():
            if record.done.is_set():
                continue
            if stream_id > last:
                record.error = ConnectionNotAvailable(
                    f"{self._name}: GOAWAY: stream {stream_id} above last_stream_id {last}, not processed"
                )
                record.done.set()
            else:
                awaited += 1
        routine = code == h2.errors.ErrorCodes.NO_ERROR
        if not awaited:
            self._close(reason, ConnectionNotAvailable, routine=routine)
            return
        # No new streams; close once the answers at or below last_stream_id are in
        # (or fail them with NoResponseAfterGoaway if the connection ends first).
        if self._state is ConnectionState.ACTIVE:
            self._state = ConnectionState.DRAINING
        self._close_reason = reason
        (logger.info if routine else logger.warning)(
            "http2 %s: %s; waiting for %d answer(s)", self._name, reason, awaited
        )
