"""Tests of our HTTP/2 client against a fake h2 server.

Most run over memory streams on trio's autojump clock (no real I/O), so
timing assertions are exact; the TLS + ALPN tests use real loopback sockets
and the real clock.
"""

from __future__ import annotations

import functools
import random

import h2.connection
import h2.errors
import h2.exceptions
import hpack
import pytest
import trio
import trio.testing
import trustme
from hyperframe.frame import GoAwayFrame

from h2_fake_server import FakeH2Server, FakeRequest, ServerConnection, memory_connector, serve_tls
from sidecar.pns._h2_limiter import StreamLimiter
from sidecar.pns._h2_protocol import _PlainEncoder, decode_response_headers
from sidecar.pns.http2 import (
    ConnectError,
    ConnectionLost,
    ConnectionNotAvailable,
    Http2Connection,
    InvalidRequest,
    Http2Endpoint,
    NoResponseAfterGoaway,
    RemoteProtocolError,
    StreamReset,
    open_http2_connection,
)
from sidecar.pns.tls import client_ssl_context


async def connect(server: FakeH2Server, nursery: trio.Nursery, **options) -> Http2Connection:
    return await memory_connector(server, **options)(nursery)


class Holder:
    """A handler that keeps requests unanswered until the test decides."""

    def __init__(self) -> None:
        self.held: list[tuple[ServerConnection, FakeRequest]] = []
        self.arrived = trio.Event()

    def __call__(self, conn: ServerConnection, request: FakeRequest) -> None:
        self.held.append((conn, request))
        self.arrived.set()

    async def answer_all(self) -> None:
        held, self.held = self.held, []
        for conn, request in held:
            conn.respond_ok(request)
        for conn in {conn for conn, _ in held}:
            await conn.flush()


# ---- basics ----------------------------------------------------------------


async def test_request_returns_status_headers_and_body(autojump_clock):
    def handler(conn, request):
        conn.respond(request, 410, {"x-path": request.headers[":path"]}, b'{"reason":"Unregistered"}')

    server = FakeH2Server(handler=handler)
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)
        response = await conn.request("POST", "/3/device/abc", [("apns-topic", "t")], b"{}")
        assert response.status == 410
        assert response.headers["x-path"] == "/3/device/abc"
        assert response.body == b'{"reason":"Unregistered"}'
        assert conn.in_flight == 0 and conn.is_available()
        await conn.aclose()
        assert conn.is_closed()
        with pytest.raises(ConnectionNotAvailable):
            await conn.request("POST", "/", [], b"x")


async def test_concurrent_streams_follow_max_concurrent_streams(autojump_clock):
    holder = Holder()
    server = FakeH2Server(max_concurrent_streams=5, handler=holder)
    results: list[int] = []
    with trio.fail_after(300):  # a deadlock fails fast on the autojump clock
        async with trio.open_nursery() as nursery:
            conn = await connect(server, nursery)
            assert conn.statistics()["max_concurrent_streams"] == 5

            async def one(i: int) -> None:
                results.append((await conn.request("POST", "/", [], b"%d" % i)).status)

            for i in range(40):
                nursery.start_soon(one, i)
            await trio.sleep(1)
            assert len(holder.held) == 5 and conn.statistics()["waiting_for_stream"] == 35
            await holder.answer_all()
            await trio.sleep(1)
            assert server.max_open == 5
            # The server raises its limit mid-flight: the client follows.
            holder.held[0][0].update_settings(MAX_CONCURRENT_STREAMS=10)
            await holder.held[0][0].flush()
            await trio.sleep(1)
            assert len(holder.held) == 10
            while len(results) < 40:
                await holder.answer_all()
                await trio.sleep(1)
            await conn.aclose()
        assert results == [200] * 40
        assert server.max_open == 10
        assert sorted(server.processed) == sorted(b"%d" % i for i in range(40))


async def test_stream_limiter_shrinks_and_grows_without_barging():
    limiter = StreamLimiter(2)
    await limiter.acquire()
    await limiter.acquire()
    limiter.resize(1)
    order: list[str] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        limiter.release()  # 1 in use, capacity 1: nobody fits yet
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        limiter.release()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a"] and limiter.in_use == 1
        limiter.resize(3)
    assert order == ["a", "b"] and limiter.in_use == 2


# ---- GOAWAY ----------------------------------------------------------------


def send_goaway_frame(conn: ServerConnection, last_stream_id: int, error_code: int = 0) -> bytes:
    """A GOAWAY written by hand after h2's pending output, leaving the server's
    h2 open so it can still answer the streams it promised (as APNs does)."""
    return conn.h2.data_to_send() + GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code).serialize()


async def hold_twenty(nursery, conn: Http2Connection, holder: Holder, outcomes: dict) -> None:
    async def one(i: int) -> None:
        try:
            outcomes[i] = (await conn.request("POST", "/", [], b"%d" % i)).status
        except Exception as exc:  # noqa: BLE001 - the test inspects the type
            outcomes[i] = exc

    for i in range(20):
        nursery.start_soon(one, i)
    await trio.sleep(1)
    assert len(holder.held) == 20


async def test_goaway_fails_streams_above_last_stream_id_as_retryable(autojump_clock):
    # Hold 20 requests, answer 5 at or below last_stream_id, then GOAWAY; the
    # other 5 at or below it are never answered: the server just closes.
    holder = Holder()
    server = FakeH2Server(handler=holder)
    outcomes: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)
        await hold_twenty(nursery, conn, holder, outcomes)
        server_conn = holder.held[0][0]
        ids = sorted(request.stream_id for _, request in holder.held)
        last = ids[9]
        answered = set(ids[:5])
        for _, request in holder.held:
            if request.stream_id in answered:
                server_conn.respond_ok(request)
        await server_conn.stream.send_all(send_goaway_frame(server_conn, last))
        await trio.sleep(1)
        assert conn.goaway == (last, 0)
        assert not conn.is_available() and not conn.is_closed()  # still owed 5 answers
        assert len(outcomes) == 15  # 5 answered + 10 refused at once
        await server_conn.stream.aclose()
        await trio.sleep(1)
    assert conn.is_closed() and not conn.is_available()
    by_stream = {request.stream_id: outcomes[int(request.body)] for _, request in holder.held}
    for stream_id, outcome in by_stream.items():
        if stream_id in answered:
            assert outcome == 200
        elif stream_id <= last:
            assert isinstance(outcome, NoResponseAfterGoaway), (stream_id, outcome)
        else:
            assert isinstance(outcome, ConnectionNotAvailable), (stream_id, outcome)
    assert sum(isinstance(o, ConnectionNotAvailable) for o in by_stream.values()) == 10
    assert sum(isinstance(o, NoResponseAfterGoaway) for o in by_stream.values()) == 5
    # No RST_STREAM for the streams the server promised to ignore.
    assert not [s for s, _ in server.client_resets if s > last]


async def test_answers_after_goaway_are_delivered(autojump_clock):
    # GOAWAY first, answers at or below last_stream_id afterwards (one of them
    # in the same write as the GOAWAY): h2 must not refuse them.
    holder = Holder()
    server = FakeH2Server(handler=holder)
    outcomes: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)
        await hold_twenty(nursery, conn, holder, outcomes)
        server_conn = holder.held[0][0]
        held = sorted(holder.held, key=lambda item: item[1].stream_id)
        last = held[9][1].stream_id
        frames = send_goaway_frame(server_conn, last)
        server_conn.respond_ok(held[0][1])
        await server_conn.stream.send_all(frames + server_conn.h2.data_to_send())
        await trio.sleep(1)
        assert conn.statistics()["state"] == "draining"
        for _, request in held[1:10]:
            server_conn.respond_ok(request)
            await server_conn.flush()
            await trio.sleep(0.1)
        await trio.sleep(1)
        # Every owed answer came: the connection closed itself, without an error.
        assert conn.is_closed()
        assert "drained after GOAWAY" in conn.statistics()["close_reason"]
    by_stream = {request.stream_id: outcomes[int(request.body)] for _, request in held}
    assert [by_stream[r.stream_id] for _, r in held[:10]] == [200] * 10
    assert all(isinstance(by_stream[r.stream_id], ConnectionNotAvailable) for _, r in held[10:])
    assert sorted(server.processed.values()) == [1] * 10


async def test_endpoint_delivers_answers_after_goaway_exactly_once(autojump_clock):
    # The first connection GOAWAYs at the middle of 40 held streams and answers
    # the processed ones only afterwards; the rest go to a second connection.
    goaway_sent = trio.Event()

    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        if conn is not server.connections[0]:
            conn.respond_ok(request)
            return
        conn.held.append(request)
        if len(conn.held) == 40:
            goaway_sent.set()

    server = FakeH2Server(handler=handler)
    bodies = [b"push-%d" % i for i in range(100)]
    statuses: list[int] = []
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            endpoint = Http2Endpoint(memory_connector(server), nursery, name="fake")

            async def one(body: bytes) -> None:
                statuses.append((await endpoint.request("POST", "/", [], body)).status)

            async def server_side() -> None:
                await goaway_sent.wait()
                first = server.connections[0]
                last = sorted(r.stream_id for r in first.held)[19]
                await first.stream.send_all(send_goaway_frame(first, last))
                await trio.sleep(2)  # the answers follow the GOAWAY
                for held in first.held:
                    if held.stream_id <= last:
                        first.respond_ok(held)
                await first.flush()

            nursery.start_soon(server_side)
            async with trio.open_nursery() as requests:
                for body in bodies:
                    requests.start_soon(one, body)
            stats = endpoint.statistics()
            await endpoint.aclose()
    assert statuses == [200] * 100
    assert server.processed == {body: 1 for body in bodies}  # each exactly once
    assert stats["connects"] == 2 and stats["resends"] >= 20


async def test_endpoint_resends_only_unprocessed_streams_after_goaway(autojump_clock):
    # First connection: once 40 requests are in, process those up to the
    # middle stream id, GOAWAY there and stop.  Later connections answer at once.
    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        if conn is not server.connections[0]:
            conn.respond_ok(request)
            return
        conn.held.append(request)
        if len(conn.held) == 40:
            last = sorted(r.stream_id for r in conn.held)[19]
            for held in conn.held:
                if held.stream_id <= last:
                    conn.respond_ok(held)
            conn.goaway(last)

    server = FakeH2Server(handler=handler)
    bodies = [b"push-%d" % i for i in range(100)]
    statuses: list[int] = []
    with trio.fail_after(300):  # a deadlock fails fast on the autojump clock
        async with trio.open_nursery() as nursery:
            endpoint = Http2Endpoint(memory_connector(server), nursery, name="fake")

            async def one(body: bytes) -> None:
                statuses.append((await endpoint.request("POST", "/", [], body)).status)

            async with trio.open_nursery() as requests:
                for body in bodies:
                    requests.start_soon(one, body)
            stats = endpoint.statistics()
            await endpoint.aclose()
        assert statuses == [200] * 100
        assert server.processed == {body: 1 for body in bodies}  # each exactly once
        assert stats["connects"] == 2
        # 20 processed before GOAWAY; at least the 20 held above last_stream_id
        # were resent (more if the client sent others before it saw the GOAWAY).
        assert len(server.connections[0].held) == 40
        assert stats["resends"] >= 20


async def test_endpoint_resends_refused_stream(autojump_clock):
    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        if request.body == b"refuse-me" and not conn.held:
            conn.held.append(request)
            conn.reset(request, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            conn.respond_ok(request)

    server = FakeH2Server(handler=handler)
    async with trio.open_nursery() as nursery:
        endpoint = Http2Endpoint(memory_connector(server), nursery)
        response = await endpoint.request("POST", "/", [], b"refuse-me")
        assert response.status == 200
        assert endpoint.statistics()["resends"] == 1
        assert endpoint.statistics()["connects"] == 1  # same connection, still fine
        await endpoint.aclose()
    assert server.processed[b"refuse-me"] == 1


# ---- failures of one stream, or of the whole connection ---------------------


async def test_stream_reset_fails_only_that_stream(autojump_clock):
    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        if request.body == b"3":
            conn.reset(request, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            conn.respond_ok(request)

    server = FakeH2Server(handler=handler)
    outcomes: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)

        async def one(i: int) -> None:
            try:
                outcomes[i] = (await conn.request("POST", "/", [], b"%d" % i)).status
            except StreamReset as exc:
                outcomes[i] = exc

        async with trio.open_nursery() as requests:
            for i in range(6):
                requests.start_soon(one, i)
        assert conn.is_available() and conn.in_flight == 0
        await conn.aclose()
    assert isinstance(outcomes.pop(3), StreamReset)
    assert outcomes == {0: 200, 1: 200, 2: 200, 4: 200, 5: 200}


async def test_invalid_headers_fail_the_request_not_the_connection(autojump_clock):
    server = FakeH2Server()
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery, max_streams=1)
        bad_headers = [
            [("Apns-Topic", "upper-case name")],
            [("connection", "close")],
            [("te", "gzip")],
            [("x-a", "a\r\nb")],
            [("x-a", " padded")],
            [("", "empty name")],
        ]
        for bad in bad_headers:
            with pytest.raises(InvalidRequest):
                await conn.request("POST", "/", bad, b"x")
        with pytest.raises(InvalidRequest):
            await conn.request("POST", "/a b\n", [], b"x")
        # The single stream slot was not leaked, and nothing reached the server.
        assert (await conn.request("POST", "/", [("apns-topic", "t")], b"ok")).status == 200
        assert server.requests == 1 and conn.is_available()
        await conn.aclose()


async def test_host_header_is_refused_before_sending(autojump_clock):
    # h2's own outbound validation is off (check_headers does it once): a host
    # header (we send :authority) must be refused before anything is encoded,
    # so the connection's HPACK state stays sound and it keeps serving.
    server = FakeH2Server()
    async with trio.open_nursery() as nursery:
        endpoint = Http2Endpoint(memory_connector(server), nursery)
        with pytest.raises(InvalidRequest):
            await endpoint.request("POST", "/", [("host", "not-the-authority")], b"x")
        assert (await endpoint.request("POST", "/", [], b"ok")).status == 200
        assert endpoint.statistics()["connects"] == 1
        await endpoint.aclose()
    assert server.processed == {b"ok": 1}


async def test_server_disconnect_fails_every_pending_stream(autojump_clock):
    holder = Holder()
    server = FakeH2Server(handler=holder)
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)

        async def one() -> None:
            with pytest.raises(ConnectionLost) as info:
                await conn.request("POST", "/", [], b"x")
            errors.append(info.value)

        for _ in range(5):
            nursery.start_soon(one)
        await trio.sleep(1)
        await trio.aclose_forcefully(holder.held[0][0].stream)
    assert len(errors) == 5
    assert len({id(e) for e in errors}) == 5  # one fresh exception per stream
    assert conn.is_closed()
    with pytest.raises(ConnectionNotAvailable):
        await conn.request("POST", "/", [], b"x")


async def test_endpoint_reconnects_with_backoff(autojump_clock):
    server = FakeH2Server()
    attempts: list[float] = []
    good = memory_connector(server)

    async def flaky(nursery: trio.Nursery) -> Http2Connection:
        attempts.append(trio.current_time())
        if len(attempts) <= 2:
            raise ConnectError("refused")
        return await good(nursery)

    async with trio.open_nursery() as nursery:
        endpoint = Http2Endpoint(flaky, nursery, backoff=lambda failures: 2.0 * failures)
        start = trio.current_time()
        with pytest.raises(ConnectError, match="refused"):
            await endpoint.request("GET", "/", [])
        with pytest.raises(ConnectError, match="not reconnecting"):
            await endpoint.request("GET", "/", [])  # fails fast inside the backoff
        assert len(attempts) == 1
        await trio.sleep(2)
        with pytest.raises(ConnectError, match="refused"):
            await endpoint.request("GET", "/", [])
        await trio.sleep(4)
        assert (await endpoint.request("GET", "/", [])).status == 200
        await endpoint.aclose()
    assert [t - start for t in attempts] == [0, 2, 6]


# ---- flow control, cancellation, ping -------------------------------------


async def test_large_body_waits_for_window_updates(autojump_clock):
    server = FakeH2Server(initial_window_size=100)
    body = bytes(range(256)) * 40  # 10240 bytes through a 100-byte stream window
    with trio.fail_after(300):  # a deadlock fails fast on the autojump clock
        async with trio.open_nursery() as nursery:
            conn = await connect(server, nursery)
            responses = []

            async def one(tag: bytes) -> None:
                responses.append(await conn.request("POST", "/", [], tag + body))

            async with trio.open_nursery() as requests:
                requests.start_soon(one, b"a")
                requests.start_soon(one, b"b")
            await conn.aclose()
        assert [r.status for r in responses] == [200, 200]
        assert server.processed == {b"a" + body: 1, b"b" + body: 1}
        assert server.data_frames >= 2 * len(body) // 100


async def test_many_bodies_share_the_connection_window_in_turn(autojump_clock):
    # Stream windows are large; the connection window (64 KiB) is what runs out.
    server = FakeH2Server(initial_window_size=1 << 20)
    bodies = [b"%02d" % i + bytes(20_000) for i in range(20)]
    with trio.fail_after(300):  # a deadlock fails fast on the autojump clock
        async with trio.open_nursery() as nursery:
            conn = await connect(server, nursery)
            statuses = []

            async def one(body: bytes) -> None:
                statuses.append((await conn.request("POST", "/", [], body)).status)

            async with trio.open_nursery() as requests:
                for body in bodies:
                    requests.start_soon(one, body)
                requests.start_soon(one, b"small")  # queues behind them, still completes
            assert conn.in_flight == 0
            await conn.aclose()
        assert statuses == [200] * 21
        assert server.processed == {body: 1 for body in [*bodies, b"small"]}


async def test_cancelled_requests_reset_their_streams_and_free_slots(autojump_clock):
    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        if request.body != b"hang":
            conn.respond_ok(request)

    server = FakeH2Server(max_concurrent_streams=2, handler=handler)
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)
        for _ in range(10):
            with trio.move_on_after(1):
                await conn.request("POST", "/", [], b"hang")
        assert conn.in_flight == 0
        # Cancelled while waiting for the window: reset too.
        server.ack_data = False
        with trio.move_on_after(1) as scope:
            await conn.request("POST", "/", [], b"x" * 200_000)
        assert scope.cancelled_caught
        server.ack_data = True
        server_conn = server.connections[0]
        server_conn.h2.increment_flow_control_window(server.unacked)
        await server_conn.flush()
        assert (await conn.request("POST", "/", [], b"ok")).status == 200
        await trio.sleep(1)
        # h2's own (walking) count, not our shortcut: nothing left open.
        assert h2.connection.H2Connection.open_outbound_streams.fget(conn._h2) == 0
        await conn.aclose()
    assert len(server.client_resets) == 11
    assert {code for _, code in server.client_resets} == {h2.errors.ErrorCodes.CANCEL}


async def test_idle_connection_sends_pings(autojump_clock):
    server = FakeH2Server()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        conn = await connect(server, nursery, ping_interval=5, ping_timeout=1)
        await trio.sleep(12)
        assert conn.is_available()
        await conn.request("GET", "/", [])  # activity postpones the next ping
        await trio.sleep(4)
        await conn.aclose()
    assert [round(t - start, 3) for t in server.pings] == [5.0, 10.0]


async def test_missing_ping_ack_breaks_the_connection(autojump_clock):
    holder = Holder()
    server = FakeH2Server(handler=holder, ack_pings=False)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        conn = await connect(server, nursery, ping_interval=5, ping_timeout=2)
        with pytest.raises(ConnectionLost, match="PING"):
            await conn.request("POST", "/", [], b"x")
        assert trio.current_time() - start == pytest.approx(7)
        assert conn.is_closed()


# ---- TLS over real loopback sockets ---------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_tls_connection_with_alpn_h2(ca, ca_file):
    server = FakeH2Server(max_concurrent_streams=7)
    async with trio.open_nursery() as nursery:
        port = await serve_tls(server, nursery, ca)
        context = client_ssl_context(ca_file=ca_file)
        conn = await open_http2_connection("127.0.0.1", port, context, nursery, connect_timeout=5)
        assert conn.statistics()["max_concurrent_streams"] == 7  # SETTINGS seen before returning
        async with trio.open_nursery() as requests:
            for i in range(30):
                requests.start_soon(functools.partial(conn.request, "POST", "/", [], b"%d" % i))
        await conn.aclose()
        nursery.cancel_scope.cancel()
    assert len(server.processed) == 30 and server.max_open <= 7


async def test_tls_refuses_a_server_without_h2(ca, ca_file):
    async with trio.open_nursery() as nursery:
        port = await serve_tls(FakeH2Server(), nursery, ca, alpn=("http/1.1",))
        with pytest.raises(ConnectError, match="ALPN"):
            await open_http2_connection("127.0.0.1", port, client_ssl_context(ca_file=ca_file), nursery)
        nursery.cancel_scope.cancel()


async def test_tls_verifies_the_server_certificate(ca):
    async with trio.open_nursery() as nursery:
        port = await serve_tls(FakeH2Server(), nursery, ca)
        # The system trust store does not know our test CA.
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await open_http2_connection("127.0.0.1", port, client_ssl_context(), nursery)
        nursery.cancel_scope.cancel()


def test_client_ssl_context_names_a_bad_file(tmp_path):
    from sidecar.pns.base import PushServiceConfigError

    with pytest.raises(PushServiceConfigError, match="missing.pem"):
        client_ssl_context(ca_file=tmp_path / "missing.pem")
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate")
    with pytest.raises(PushServiceConfigError, match="cert.pem"):
        client_ssl_context(cert_file=bad)


# ---- what we ask of h2 (sidecar.pns._h2_protocol) -------------------------


@pytest.mark.parametrize(
    "block",
    [
        [(b"apns-id", b"x")],  # no :status
        [(b"apns-id", b"x"), (b":status", b"200")],  # pseudo-header after a regular one
        [(b":status", b"200"), (b":path", b"/")],  # request pseudo-header
        [(b":status", b"20x")],
        [(b":status", b"200"), (b"Apns-Id", b"x")],  # upper case
        [(b":status", b"200"), (b"connection", b"close")],
        [(b":status", b"200"), (b"x", b"a\r\nb")],
        [(b":status", b"200"), (b"x", b" padded")],
        [(b":status", b"200"), (b"x", b"\xff")],  # not UTF-8
    ],
)
def test_malformed_response_header_blocks_are_refused(block):
    with pytest.raises(h2.exceptions.ProtocolError):
        decode_response_headers(block)


def test_response_header_blocks_are_decoded():
    block = [(b":status", b"410"), (b"apns-id", b"\xc3\xa9"), (b"te", b"trailers")]
    assert decode_response_headers(block) == [(":status", "410"), ("apns-id", "é"), ("te", "trailers")]
    assert decode_response_headers([(b"grpc-status", b"0")], trailers=True) == [("grpc-status", "0")]
    with pytest.raises(h2.exceptions.ProtocolError):
        decode_response_headers([(b":status", b"200")], trailers=True)


async def test_malformed_response_fails_the_connection(autojump_clock):
    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        conn.h2.config.validate_outbound_headers = False  # let the fake server misbehave
        conn.h2.config.normalize_outbound_headers = False
        conn.respond(request, 200, {"connection": "close"})

    server = FakeH2Server(handler=handler)
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)
        with pytest.raises(RemoteProtocolError, match="invalid response header name"):
            await conn.request("POST", "/", [], b"x")
        assert conn.is_closed()


def test_plain_encoder_matches_hpack_without_huffman():
    rng = random.Random(7)
    ours, reference, decoder = _PlainEncoder(), hpack.Encoder(), hpack.Decoder()
    names = [b":method", b":path", b":scheme", b":authority", b"apns-topic", b"authorization", b"x-big"]
    values = [b"POST", b"GET", b"https", b"/", b"/3/device/1", b"/3/device/2", b"1", b"2", b"v" * 300, b"w" * 5000]
    for round_number in range(3000):
        if round_number % 1000 == 0:  # table size changes and evictions too
            ours.header_table_size = reference.header_table_size = rng.choice([0, 100, 4096])
        block = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(1, 9))]
        encoded = ours.encode(block)
        assert encoded == reference.encode(block, huffman=False)
        assert decoder.decode(encoded, raw=True) == block
    # A never-indexed field keeps hpack's meaning.
    secret = hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")
    assert ours.encode([secret]) == reference.encode([secret], huffman=False)


async def test_bodies_waiting_for_the_connection_window_leave_together(autojump_clock):
    # 30 bodies of 4 KiB against the 64 KiB connection window the server does
    # not give back: 15 leave, the others wait in order and leave as soon as
    # one WINDOW_UPDATE allows them.
    server = FakeH2Server(initial_window_size=1 << 20)
    server.ack_data = False
    bodies = [b"%02d" % i + bytes(4094) for i in range(30)]
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            conn = await connect(server, nursery)
            statuses = []

            async def one(body: bytes) -> None:
                statuses.append((await conn.request("POST", "/", [], body)).status)

            async with trio.open_nursery() as requests:
                for body in bodies:
                    requests.start_soon(one, body)
                await trio.sleep(1)
                waiting = list(conn._pending_bodies)
                assert len(waiting) == 30 - 65535 // 4096 and waiting == sorted(waiting)
                server.ack_data = True
                server_conn = server.connections[0]
                server_conn.h2.increment_flow_control_window(server.unacked)
                await server_conn.flush()
            assert not conn._pending_bodies and conn.in_flight == 0
            await conn.aclose()
        assert statuses == [200] * 30
        assert server.processed == {body: 1 for body in bodies}


# ---- a connection cut after answering -------------------------------------


class GatedStream(trio.abc.Stream):
    """A client transport whose reads can be held back (answers waiting in the
    kernel's buffer) and whose writes can be made to fail (the peer reset)."""

    def __init__(self, inner: trio.abc.Stream):
        self.inner = inner
        self.reads_open = trio.Event()
        self.reads_open.set()
        self.fail_writes = False

    async def send_all(self, data) -> None:
        if self.fail_writes:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("connection reset by peer")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        await self.reads_open.wait()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_failed_write_still_delivers_the_answers_already_received(autojump_clock):
    holder = Holder()
    server = FakeH2Server(handler=holder)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    gated = GatedStream(client_stream)
    results: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve, server_stream)
        conn = Http2Connection(gated, authority="fake.test")
        await conn.start(nursery)
        await conn.wait_remote_settings()

        async def one(tag: str) -> None:
            try:
                results[tag] = (await conn.request("POST", "/", [], tag.encode())).status
            except Exception as exc:  # noqa: BLE001 - the error is the result
                results[tag] = exc

        for tag in ("answered", "unanswered"):
            nursery.start_soon(one, tag)
        await trio.sleep(1)
        assert len(holder.held) == 2
        gated.reads_open = trio.Event()  # the answer arrives, but we have not read it yet
        answered = next((c, r) for c, r in holder.held if r.body == b"answered")
        answered[0].respond_ok(answered[1])
        await answered[0].flush()
        gated.fail_writes = True  # ...and the peer resets: our next write fails
        nursery.start_soon(one, "written-after")
        await trio.sleep(0.1)
        assert conn.statistics()["state"] == "draining"
        gated.reads_open.set()
        await trio.sleep(5)  # the read grace after the failed write ends
    assert results["answered"] == 200  # read after the write failed: delivered, not lost
    assert isinstance(results["unanswered"], ConnectionLost)  # sent, never answered: unknown
    assert isinstance(results["written-after"], ConnectionLost)  # handed to the failed write
    assert conn.is_closed()


async def test_a_request_that_never_left_is_resendable(autojump_clock):
    holder = Holder()
    server = FakeH2Server(handler=holder, initial_window_size=10)
    server.ack_data = False  # the window never reopens: the body's end never leaves
    async with trio.open_nursery() as nursery:
        conn = await connect(server, nursery)
        outcome: dict[str, object] = {}

        async def big() -> None:
            try:
                await conn.request("POST", "/", [], b"x" * 100)  # waits for window: no END_STREAM sent
            except Exception as exc:  # noqa: BLE001
                outcome["big"] = exc

        nursery.start_soon(big)
        await trio.sleep(1)
        await trio.aclose_forcefully(server.connections[0].stream)
        await trio.sleep(1)
    assert isinstance(outcome["big"], ConnectionNotAvailable), outcome
