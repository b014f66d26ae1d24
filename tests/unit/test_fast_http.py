"""The fast HTTP/1.1 server: what only raw bytes can show (the v1 behaviour
itself runs on both paths in test_http_v1.py)."""

from __future__ import annotations

import ipaddress
import json
import socket
from functools import partial

import httpx
import trio

from sidecar.ingress.fast_http import FastHttpServer
from sidecar.ingress.http import create_http_app

from fast_transport import receive_until_closed, send_all
from test_http_v1 import SYLK_BODY, FakeRuntime, make_settings

PUSH = json.dumps(SYLK_BODY).encode()


def request(body: bytes = PUSH, *, extra: bytes = b"", path: bytes = b"/push") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n" % len(body) + extra + b"\r\n" + body)


def answers(raw: bytes) -> list[tuple[int, dict, bytes]]:
    """(status, JSON body, head) of each answer in ``raw``."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 100:
            raw = rest
            continue
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        found.append((status, json.loads(rest[:length]), head))
        raw = rest[length:]
    return found


async def exchange(runtime, *chunks: bytes, client=("127.0.0.1", 9), half_close=True) -> bytes:
    """Send ``chunks`` (one write each) on one connection; everything answered."""
    server = FastHttpServer(create_http_app(runtime), runtime, lambda: runtime.settings)
    server.server_address = ("127.0.0.1", 8400)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs = trio.socket.from_stdlib_socket(theirs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_connection, ours, client)
        with theirs:
            for chunk in chunks:
                await send_all(theirs, chunk)
                await trio.sleep(0.01)
            if half_close:
                theirs.shutdown(trio.socket.SHUT_WR)
            return await receive_until_closed(theirs)


async def test_pipelined_requests_are_answered_in_order_on_one_connection():
    runtime = FakeRuntime()
    second = json.dumps({**SYLK_BODY, "call-id": "call-2"}).encode()
    raw = await exchange(runtime, request() + request(second) + request(b"{bad"))
    got = answers(raw)
    assert [status for status, _, _ in got] == [200, 200, 400]
    assert [body["data"].get("call_id") for _, body, _ in got[:2]] == ["call-1", "call-2"]
    assert b"connection: close" not in got[0][2]


async def test_a_request_split_across_writes_is_reassembled():
    runtime = FakeRuntime()
    whole = request()
    raw = await exchange(runtime, whole[:7], whole[7:60], whole[60:])
    (status, body, _), = answers(raw)
    assert status == 200 and body["data"]["call_id"] == "call-1"


async def test_refused_client_is_answered_before_it_sends_the_body():
    runtime = FakeRuntime(make_settings(allowed_hosts=(ipaddress.ip_network("10.0.0.0/8"),)))
    head_only = request(b"x" * 1000)[:-1000]
    # The body never comes: the answer must not wait for it.
    with trio.fail_after(5):
        raw = await exchange(runtime, head_only, client=("192.0.2.7", 1), half_close=False)
    (status, body, head), = answers(raw)
    assert (status, body["description"]) == (403, "access denied by access list")
    assert b"connection: close" in head and runtime.dispatched == []


async def test_declared_oversized_body_is_413_before_it_is_sent():
    runtime = FakeRuntime(make_settings(max_body_size=300))
    head_only = request(b"x" * 301)[:-301]
    with trio.fail_after(5):
        raw = await exchange(runtime, head_only, half_close=False)
    (status, body, _), = answers(raw)
    assert status == 413 and "300 bytes" in body["description"]


async def test_chunked_body_over_the_limit_is_413():
    runtime = FakeRuntime(make_settings(max_body_size=300))
    head = b"POST /push HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    chunk = b"c8\r\n" + b" " * 200 + b"\r\n"
    raw = await exchange(runtime, head + chunk, chunk, half_close=False)
    (status, body, _), = answers(raw)
    assert status == 413 and runtime.dispatched == []


async def test_chunked_body_within_the_limit_is_accepted():
    runtime = FakeRuntime()
    head = b"POST /push HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (PUSH[:20], PUSH[20:]))
    raw = await exchange(runtime, head + body + b"0\r\n\r\n")
    (status, answer, _), = answers(raw)
    assert status == 200 and answer["data"]["call_id"] == "call-1"


async def test_expect_100_continue_is_honoured():
    runtime = FakeRuntime()
    whole = request(extra=b"expect: 100-continue\r\n")
    head, body = whole[:-len(PUSH)], PUSH
    raw = await exchange(runtime, head, body)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert answers(raw)[0][0] == 200


async def test_malformed_request_is_400_in_sylk_shape_and_closed():
    raw = await exchange(FakeRuntime(), b"NOT HTTP AT ALL\r\n\r\n")
    (status, body, head), = answers(raw)
    assert status == 400 and set(body) == {"code", "description", "data"}
    assert b"connection: close" in head


async def test_invalid_content_length_is_400():
    raw = await exchange(FakeRuntime(), b"POST /push HTTP/1.1\r\ncontent-length: 1x\r\n\r\n")
    assert answers(raw)[0][0] == 400


async def test_http_1_0_without_keep_alive_is_closed_after_the_answer():
    runtime = FakeRuntime()
    raw = await exchange(runtime, request().replace(b"HTTP/1.1", b"HTTP/1.0", 1), half_close=False)
    (status, _, head), = answers(raw)
    assert status == 200 and b"connection: close" in head


async def test_real_tcp_server_serves_push_and_the_rest_then_stops_gracefully():
    runtime = FakeRuntime()
    slow = trio.Event()

    async def slow_dispatch(push, app, app_type):
        runtime.dispatched.append(push)
        await slow.wait()
        return runtime.outcome

    runtime.dispatch = slow_dispatch
    server = FastHttpServer(create_http_app(runtime), runtime, lambda: runtime.settings)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(server.serve, "127.0.0.1", 0, stop))
        assert not urls[0].endswith(":0")
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["data"] == {"status": "ok"}
            assert (await client.get("/openapi.json")).json()["info"]["title"] == "pushsidecar"
            assert (await client.get("/v2/nothing")).status_code == 404
            # A push in flight when the stop comes is still answered.
            results = []

            async def push():
                results.append(await client.post("/push", json=SYLK_BODY))

            nursery.start_soon(push)
            while not runtime.dispatched:
                await trio.sleep(0.01)
            stop.set()
            await trio.sleep(0.05)
            slow.set()
            with trio.fail_after(5):
                while not results:
                    await trio.sleep(0.01)
    assert results[0].status_code == 200
    assert results[0].headers["connection"] == "close"
    # Stopped: nothing listens any more.
    port = int(urls[0].rsplit(":", 1)[1])
    try:
        await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        pass
    else:
        raise AssertionError("still listening after stop")


async def test_idle_and_stalled_connections_are_closed(monkeypatch, autojump_clock):
    import sidecar.ingress.fast_http as fast_http

    runtime = FakeRuntime()
    server = FastHttpServer(create_http_app(runtime), runtime, lambda: runtime.settings)
    server.server_address = ("127.0.0.1", 8400)
    for sent, limit in ((request(), fast_http.KEEP_ALIVE_TIMEOUT), (request()[:40], fast_http.READ_TIMEOUT)):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs = trio.socket.from_stdlib_socket(theirs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_connection, ours, ("127.0.0.1", 9))
            with theirs:
                await send_all(theirs, sent)
                started = trio.current_time()
                answer = await receive_until_closed(theirs)  # returns when the server closes
                assert trio.current_time() - started >= limit - 0.5
        assert (b"HTTP/1.1 200" in answer) == (len(sent) > 40)


async def test_bearer_token_is_checked_before_the_body_on_the_fast_path():
    secret = "s3cret-token-0123456789abcdef"
    runtime = FakeRuntime(make_settings(bearer_tokens=(("sylkserver", secret),)))
    head_only = request(b"x" * 500)[:-500]
    with trio.fail_after(5):
        raw = await exchange(runtime, head_only, half_close=False)
    (status, body, head), = answers(raw)
    assert status == 401 and body["description"] == "a valid bearer token is required"
    assert b'www-authenticate: Bearer realm="pushsidecar"' in head and runtime.dispatched == []
    raw = await exchange(runtime, request(extra=f"authorization: Bearer {secret}\r\n".encode()))
    assert answers(raw)[0][0] == 200 and len(runtime.dispatched) == 1


async def test_parser_errors_answer_like_hypercorn():
    too_long = b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n"
    gzip = b"POST /push HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n"
    for raw, status in ((too_long, 431), (gzip, 501), (b"GARBAGE\r\n\r\n", 400)):
        (code, body, head), = answers(await exchange(FakeRuntime(), raw))
        assert code == status and body["code"] == status and b"connection: close" in head
