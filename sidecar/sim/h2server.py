"""One server-side HTTP/2 connection, driven by h2 on a trio stream.

Theory of operation: one reader task feeds received bytes to h2, handles the
whole batch of events (answering requests synchronously when no delay is
scripted) and then writes everything h2 produced with a single ``send_all``,
so a burst of a hundred requests costs one write.  Delayed answers run in
the connection's nursery and flush on their own.  Every write goes through
:meth:`H2ServerConnection._flush` under one lock.

Two things h2 does not do the way a push service does, so they are done by
hand here:

- *Stream limit.* Apple advertises ``SETTINGS_MAX_CONCURRENT_STREAMS = 1``
  on a token-auth connection until a request succeeds, then raises it.  h2
  would turn a stream over its local limit into a connection error, which
  is wrong before the peer has seen our SETTINGS (RFC 9113 §5.1.2 says
  refuse the stream).  So h2 keeps a high limit, the SETTINGS frames that
  advertise ours are written by hand, and streams over the advertised limit
  are refused with RST_STREAM(REFUSED_STREAM).
- *Graceful GOAWAY.* ``H2Connection.close_connection`` closes h2's state
  machine, after which it cannot answer the streams the GOAWAY promised to
  process.  So the GOAWAY frame is written by hand: streams up to
  ``last_stream_id`` are answered, later ones are ignored (RFC 9113 §6.8),
  and the connection closes once the promised ones are answered.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import socket
import struct
import termios
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack
from hpack import NeverIndexedHeaderTuple
import trio
from hyperframe.frame import GoAwayFrame, SettingsFrame

from .exchange import ConnectionInfo, GoAway, Incoming, Plan

RECEIVE_SIZE = 65536
#: h2's own stream limit: never reached by a client that honours ours.
HARD_STREAM_LIMIT = 100_000
MAX_BODY = 1 << 20
#: after a GOAWAY's last answer, keep reading this long so the client gets
#: every byte before the socket closes (closing with unread data sends RST).
LINGER = 0.5
CLOSE_TIMEOUT = 1.0

MAX_CONCURRENT_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS

# h2 sends ``authorization`` never-indexed, so every APNs/FCM request carries
# its ~200-byte bearer token Huffman-coded, and hpack decodes Huffman in pure
# Python (~400 us per token: the largest per-request cost of this server).
# The decoding is a pure function of the bytes, so memoising it is safe; the
# cache is process-wide because hpack looks the function up in its module.
if not hasattr(hpack.hpack.decode_huffman, "cache_info"):
    hpack.hpack.decode_huffman = functools.lru_cache(maxsize=1024)(hpack.hpack.decode_huffman)


@dataclasses.dataclass(slots=True)
class _PendingRequest:
    headers: list[tuple[str, str]]
    body: bytearray
    complete: bool = False


class H2ServerConnection:
    """Serves one HTTP/2 connection.

    Args:
        stream: the TLS stream after the handshake.
        info: what handlers may know about this connection.
        plan: the simulator's decision function for one request.
        batch_done: called after each batch of events (flushes records).
        max_streams: the SETTINGS_MAX_CONCURRENT_STREAMS advertised at first.
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream | trio.SSLStream,
                 info: ConnectionInfo, plan: Callable[[Incoming], Plan],
                 batch_done: Callable[[], None], *, max_streams: int) -> None:
        self._stream = stream
        self._info = info
        self._plan = plan
        self._batch_done = batch_done
        # Inbound header validation is h2's largest per-request cost after
        # hpack; our clients are h2 too, whose outbound validation already
        # refuses what the inbound checks would catch.
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        ))
        self._advertised = max_streams
        self._open: dict[int, _PendingRequest] = {}  # received, not yet answered
        self._out = bytearray()  # hand-written frames, in order with h2's output
        self._send_lock = trio.Lock()
        self._window_opened = trio.Event()
        self._goaway_last: int | None = None
        self._drop = False
        self._cut = False  # drop with a TCP RST, right after an answer
        self._terminated = False
        self._nursery: trio.Nursery | None = None
        self._reader_scope: trio.CancelScope | None = None
        self.refused_streams = 0
        self.goaways_sent = 0

    async def run(self) -> None:
        """Serve until the peer leaves, a fault closes the connection or cancellation."""
        try:
            self._start()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                with trio.CancelScope() as self._reader_scope:
                    await self._guarded(self._read_loop)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def _close(self) -> None:
        if self._drop and isinstance(self._stream, trio.SSLStream):
            # Abrupt: close TCP without a TLS close_notify.
            if self._cut:  # and with a RST: nothing more can be read or written
                transport = self._stream.transport_stream
                sock = getattr(transport, "socket", None)
                if sock is not None:
                    # A RST discards what is still in our send queue: let the
                    # answer leave first, as a server that crashed after
                    # answering had sent it.
                    with trio.move_on_after(1.0):
                        while _unsent_bytes(sock) > 0:
                            await trio.sleep(0.001)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.aclose_forcefully(self._stream.transport_stream)
            await trio.aclose_forcefully(self._stream)
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._stream.aclose()  # sends close_notify
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(self._stream)

    async def _guarded(self, work: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``work``; a broken connection ends the whole connection quietly."""
        try:
            await work(*args)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self._reader_scope is not None:
                self._reader_scope.cancel()

    # -- setup -------------------------------------------------------------

    def _start(self) -> None:
        conn = self._h2
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            MAX_CONCURRENT_STREAMS: HARD_STREAM_LIMIT,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
        })
        conn.initiate_connection()
        conn.data_to_send()  # replaced by our own first SETTINGS frame
        frame = SettingsFrame(0)
        for setting, value in conn.local_settings.items():
            frame.settings[setting] = value
        frame.settings[MAX_CONCURRENT_STREAMS] = self._advertised
        self._out += frame.serialize()

    def _advertise(self, max_streams: int) -> None:
        if max_streams <= self._advertised:
            return
        self._advertised = max_streams
        frame = SettingsFrame(0)
        frame.settings[MAX_CONCURRENT_STREAMS] = max_streams
        self._out += self._h2.data_to_send()
        self._out += frame.serialize()

    # -- receiving ---------------------------------------------------------

    async def _read_loop(self) -> None:
        await self._flush()
        while not self._terminated:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            try:
                events = self._h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                await self._flush()  # h2 queued a GOAWAY explaining why
                return
            for event in events:
                self._handle(event)
                if self._drop:
                    break
            self._batch_done()
            await self._flush()
            if self._drop:
                return
            self._maybe_finish_goaway()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            pending = self._open.get(event.stream_id)
            if pending is not None:
                pending.body += event.data
                if len(pending.body) > MAX_BODY:
                    self._reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.StreamEnded):
            pending = self._open.get(event.stream_id)
            if pending is not None and not pending.complete:
                pending.complete = True
                self._dispatch(event.stream_id, pending)
        elif isinstance(event, h2.events.StreamReset):
            self._open.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_opened.set()
            self._window_opened = trio.Event()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._terminated = True

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_last is not None and stream_id > self._goaway_last:
            return  # RFC 9113 §6.8: ignored, the client retries it elsewhere
        if len(self._open) >= self._advertised:
            self.refused_streams += 1
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        headers = [(name.decode("latin-1"), value.decode("utf-8", "replace"))
                   for name, value in event.headers]
        self._open[stream_id] = _PendingRequest(headers, bytearray())

    def _dispatch(self, stream_id: int, pending: _PendingRequest) -> None:
        method = path = ""
        fields = []
        for name, value in pending.headers:
            if name.startswith(":"):
                if name == ":method":
                    method = value
                elif name == ":path":
                    path = value
            else:
                fields.append((name, value))
        incoming = Incoming.build(method, path, fields, bytes(pending.body), self._info, stream_id)
        plan = self._plan(incoming)
        if plan.drop:
            self._drop = True
            return
        if plan.delay > 0:
            assert self._nursery is not None
            self._nursery.start_soon(self._guarded, self._answer_later, stream_id, plan)
        else:
            self._answer(stream_id, plan)
            if plan.cut:  # the read loop flushes the answer, then closes
                self._drop = self._cut = True
        if plan.goaway is not None:
            self._send_goaway(plan.goaway)

    # -- answering ---------------------------------------------------------

    async def _answer_later(self, stream_id: int, plan: Plan) -> None:
        await trio.sleep(plan.delay)
        self._answer(stream_id, plan)
        self._batch_done()
        await self._flush()
        if plan.cut and self._reader_scope is not None:
            self._drop = self._cut = True
            self._reader_scope.cancel()
        self._maybe_finish_goaway()

    def _answer(self, stream_id: int, plan: Plan) -> None:
        if self._open.pop(stream_id, None) is None:
            return  # reset by the client, or beyond a GOAWAY
        if plan.reset is not None:
            self._reset(stream_id, plan.reset)
            return
        reply = plan.reply
        if reply is None:
            return
        # Per-response values (apns-id) would only churn the HPACK table.
        headers = [(":status", str(reply.status))]
        headers += [NeverIndexedHeaderTuple(name, value) if name == "apns-id" else (name, value)
                    for name, value in reply.headers]
        body = reply.body
        if body:
            headers.append(("content-length", str(len(body))))
        conn = self._h2
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                if (len(body) <= conn.local_flow_control_window(stream_id)
                        and len(body) <= conn.max_outbound_frame_size):
                    conn.send_data(stream_id, body, end_stream=True)
                else:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._guarded, self._send_body, stream_id, body)
        except h2.exceptions.ProtocolError:
            return  # the client reset the stream meanwhile
        if plan.raise_streams:
            self._advertise(plan.raise_streams)

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        conn = self._h2
        view = memoryview(body)
        try:
            while view:
                size = min(len(view), conn.local_flow_control_window(stream_id),
                           conn.max_outbound_frame_size)
                if size <= 0:
                    await self._window_opened.wait()
                    continue
                conn.send_data(stream_id, bytes(view[:size]), end_stream=size == len(view))
                view = view[size:]
                await self._flush()
        except h2.exceptions.ProtocolError:
            pass

    def _reset(self, stream_id: int, error_code: int) -> None:
        self._open.pop(stream_id, None)
        try:
            self._h2.reset_stream(stream_id, error_code)
        except h2.exceptions.ProtocolError:
            pass

    def _send_goaway(self, goaway: GoAway) -> None:
        last = goaway.last_stream_id
        if self._goaway_last is not None:
            last = min(last, self._goaway_last)  # RFC: it may only go down
        self._goaway_last = last
        frame = GoAwayFrame(0, last_stream_id=last, error_code=goaway.error_code,
                            additional_data=goaway.debug_data)
        self._out += self._h2.data_to_send()
        self._out += frame.serialize()
        self.goaways_sent += 1
        for stream_id in [s for s in self._open if s > last]:
            del self._open[stream_id]  # promised unprocessed: never answered

    def _maybe_finish_goaway(self) -> None:
        if self._goaway_last is None or self._open or self._reader_scope is None:
            return
        if self._reader_scope.deadline == float("inf"):
            self._reader_scope.deadline = trio.current_time() + LINGER

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._h2.data_to_send()
            if self._out:
                data = bytes(self._out) + data
                self._out.clear()
            if data:
                await self._stream.send_all(data)


def _unsent_bytes(sock: trio.socket.SocketType) -> int:
    """Bytes in the socket's send queue (Linux SIOCOUTQ); 0 where unknown."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(raw, "little")
