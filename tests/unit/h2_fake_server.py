"""A small scriptable HTTP/2 server for the client tests (not the APNs simulator).

It is a server-side ``h2`` connection over any trio stream: memory streams for
virtual-time tests, TLS over loopback for the ALPN tests.  By default it
answers every request with 200 at once; a ``handler`` can hold, answer later,
reset, or send GOAWAY instead.  It records what it saw so tests can assert on
it: every processed request body (``processed``), pings, resets from the
client, authorization values, and the most streams ever open at once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import ssl
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import trio
import trustme


@dataclasses.dataclass
class FakeRequest:
    stream_id: int
    headers: dict[str, str]
    body: bytes = b""


Handler = Callable[["ServerConnection", FakeRequest], None]


class FakeH2Server:
    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = 65535,
        handler: Handler | None = None,
        ack_pings: bool = True,
    ):
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.handler = handler or (lambda conn, request: conn.respond_ok(request))
        self.ack_pings = ack_pings
        self.ack_data = True  # False: never give flow-control window back
        self.unacked = 0  # connection-level bytes kept while ack_data was False
        self.connections: list[ServerConnection] = []
        self.processed: collections.Counter[bytes] = collections.Counter()
        self.requests = 0
        self.authorizations: collections.Counter[str] = collections.Counter()
        self.pings: list[float] = []
        self.client_resets: list[tuple[int, int]] = []
        self.max_open = 0
        self.data_frames = 0

    async def serve(self, stream: trio.abc.Stream) -> None:
        connection = ServerConnection(self, stream)
        self.connections.append(connection)
        await connection.run()


class ServerConnection:
    def __init__(self, server: FakeH2Server, stream: trio.abc.Stream):
        self.server = server
        self.stream = stream
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.partial: dict[int, FakeRequest] = {}
        self.open: set[int] = set()  # complete requests not answered yet
        self.held: list[FakeRequest] = []  # for handlers that answer later
        self.write_lock = trio.Lock()
        self.closed = False

    # ---- actions for handlers (synchronous; the run loop flushes) ---------

    def respond(self, request: FakeRequest, status: int, headers: dict[str, str] | None = None,
                body: bytes = b"") -> None:
        if self.closed:
            return
        self.open.discard(request.stream_id)
        fields = [(":status", str(status)), *(headers or {}).items()]
        if body:
            fields.append(("content-length", str(len(body))))
        self.h2.send_headers(request.stream_id, fields, end_stream=not body)
        if body:
            self.h2.send_data(request.stream_id, body, end_stream=True)

    def respond_ok(self, request: FakeRequest) -> None:
        """Count the request as processed and answer 200 with an apns-id."""
        self.server.processed[request.body] += 1
        self.respond(request, 200, {"apns-id": f"id-{request.stream_id}"})

    def reset(self, request: FakeRequest, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        self.open.discard(request.stream_id)
        self.h2.reset_stream(request.stream_id, code)

    def goaway(self, last_stream_id: int, additional_data: bytes | None = None) -> None:
        self.h2.close_connection(last_stream_id=last_stream_id, additional_data=additional_data)
        self.closed = True

    def update_settings(self, **settings: int) -> None:
        self.h2.update_settings({getattr(h2.settings.SettingCodes, k): v for k, v in settings.items()})

    async def flush(self) -> None:
        async with self.write_lock:
            data = self.h2.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.closed = True

    # ---- the loop ----------------------------------------------------------

    async def run(self) -> None:
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.server.initial_window_size,
            },
        )
        self.h2.initiate_connection()
        await self.flush()
        try:
            while not self.closed:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                for event in self.h2.receive_data(data):
                    self._handle(event)
                    if self.closed:
                        break
                await self.flush()
        finally:
            self.closed = True
            await trio.aclose_forcefully(self.stream)

    def _handle(self, event: h2.events.Event) -> None:
        server = self.server
        if isinstance(event, h2.events.RequestReceived):
            self.partial[event.stream_id] = FakeRequest(event.stream_id, dict(event.headers))
            auth = dict(event.headers).get("authorization")
            if auth:
                server.authorizations[auth] += 1
        elif isinstance(event, h2.events.DataReceived):
            server.data_frames += 1
            self.partial[event.stream_id].body += event.data
            if server.ack_data:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                server.unacked += event.flow_controlled_length
        elif isinstance(event, h2.events.StreamEnded):
            request = self.partial.pop(event.stream_id)
            server.requests += 1
            self.open.add(event.stream_id)
            server.max_open = max(server.max_open, len(self.open) + len(self.partial))
            server.handler(self, request)
        elif isinstance(event, h2.events.StreamReset):
            server.client_resets.append((event.stream_id, event.error_code))
            self.partial.pop(event.stream_id, None)
            self.open.discard(event.stream_id)
        elif isinstance(event, h2.events.PingReceived):
            server.pings.append(trio.current_time())
            if not server.ack_pings:
                # h2 queued the ack already; drop everything we would send.
                self.h2.data_to_send()


def memory_connector(server: FakeH2Server, **options):
    """A Connector for Http2Endpoint that serves each connection from ``server``."""
    from sidecar.pns.http2 import Http2Connection

    async def connect(nursery: trio.Nursery) -> Http2Connection:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve, server_stream)
        connection = Http2Connection(client_stream, authority="fake.test", **options)
        await connection.start(nursery)
        await connection.wait_remote_settings()
        return connection

    return connect


async def serve_tls(
    server: FakeH2Server, nursery: trio.Nursery, ca: trustme.CA, *, alpn: tuple[str, ...] = ("h2",)
) -> int:
    """Serve ``server`` with TLS on 127.0.0.1; return the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    context.set_alpn_protocols(list(alpn))

    async def handle(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, context, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return
        await server.serve(tls)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]
