"""Hostile input at every ingress never reaches a 500, a traceback or an unlogged push.

Bounded fuzzing (fixed seeds, a few hundred inputs each, loopback only) of
the HTTP API (random bytes, broken JSON, wrong types, huge headers, slow
clients, invalid HTTP/2 prefaces) and of the ZeroMQ ingress (random msgpack
frames), plus exact checks of the answers the HTTP server layer makes.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time

import httpx
import msgpack
import pytest
import trio
import zmq

from sidecar import wire
from sidecar.service import SidecarHandle
from sidecar.sim.creds import SimCredentials

from test_goaway_end_to_end import call_body

TEXT_FIELDS = ("app-id", "platform", "token", "call-id", "from", "to", "event", "device-id",
               "from-display-name", "media-type", "reason")


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def raw_exchange(url: str, data: bytes, *, read_timeout: float = 5.0, eof: bool = False) -> bytes:
    """Send ``data`` on a fresh TCP connection (then EOF if ``eof``); return the answer until EOF."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    stream = await trio.open_tcp_stream(host, int(port))
    answer = b""
    try:
        try:
            await stream.send_all(data)
            if eof:
                await stream.send_eof()
        except trio.BrokenResourceError:
            pass  # the server answered and closed before reading it all: read the answer
        with trio.move_on_after(read_timeout):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return answer


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def sylk_shaped(body: dict) -> bool:
    return set(body) == {"code", "description", "data"}


@pytest.mark.parametrize("field", TEXT_FIELDS)
async def test_lone_surrogates_are_refused_naming_the_field(
    client: httpx.AsyncClient, sim_credentials: SimCredentials, field: str, caplog
) -> None:
    body = json.dumps(call_body(sim_credentials, "s1"))
    body = body.replace('"' + field + '": "', '"' + field + '": "\\ud800', 1)
    if field not in json.loads(body) or "\\ud800" not in body:
        body = body[:-1] + f', "{field}": "x\\udfff"}}'
    reply = await client.post("/push", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert f"'{field}'" in reply.json()["description"] and "Unicode" in reply.json()["description"]
    assert not tracebacks(caplog)


async def test_over_long_fields_are_refused(client: httpx.AsyncClient, sim_credentials) -> None:
    body = call_body(sim_credentials, "x" * 5000)
    reply = await client.post("/push", json=body)
    assert reply.status_code == 400 and "'call-id' is longer than" in reply.json()["description"]


@pytest.mark.parametrize("account", ["@", "a@", "@b", "a b@c", "a@b c", "a@-x", "al%zz@b"])
async def test_malformed_v2_accounts_are_400(client: httpx.AsyncClient, account: str) -> None:
    from urllib.parse import quote

    for method, path in (("POST", ""), ("DELETE", ""), ("POST", "/push")):
        reply = await client.request(method, f"/v2/tokens/{quote(account, safe='@')}{path}",
                                     json={"app-id": "a", "platform": "apple", "token": "t",
                                           "device-id": "d", "call-id": "c", "from": "f", "to": "t"})
        assert reply.status_code == 400, (method, path, reply.text)
        assert "Invalid account" in reply.json()["description"]


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"POST /push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400),
])
async def test_http_server_errors_have_the_sylk_shape(
    sidecar: SidecarHandle, request_bytes: bytes, status: int, caplog
) -> None:
    answer = await raw_exchange(sidecar.http_url, request_bytes)
    code, body = status_and_body(answer)
    assert code == status and sylk_shaped(body) and body["code"] == status
    assert not tracebacks(caplog)


async def test_oversized_chunked_body_is_413_without_traceback(sidecar: SidecarHandle, caplog) -> None:
    chunk = b"x" * 8192
    data = b"POST /push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 40 + b"0\r\n\r\n"
    answer = await raw_exchange(sidecar.http_url, data)
    code, body = status_and_body(answer)
    assert code == 413 and sylk_shaped(body)
    await trio.sleep(0.2)
    assert not tracebacks(caplog), [r.getMessage() for r in tracebacks(caplog)]


def random_json_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(8 if depth < 3 else 5)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-2**62, 2**62)  # msgpack's range; JSON's is wider but our parsing is the same
    if choice == 3:
        return rng.random() * 1e300
    if choice == 4:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x10FFFF)]))
                       for _ in range(rng.randrange(0, 20))).replace("\ud800", "")
    if choice == 5:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(TEXT_FIELDS + ("silent", "badge")): random_json_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


async def test_fuzz_http_bodies_never_5xx_from_our_code(
    sidecar: SidecarHandle, client: httpx.AsyncClient, sim_credentials, caplog
) -> None:
    rng = random.Random(11)
    statuses: list[int] = []
    good = call_body(sim_credentials, "fuzz")
    bodies: list[bytes] = []
    for i in range(150):  # wrong types in an otherwise valid push
        body = dict(good, **{"call-id": f"fz{i}"})
        body[rng.choice(list(body))] = random_json_value(rng)
        bodies.append(json.dumps(body).encode())
    for _ in range(100):  # broken JSON
        text = json.dumps(good)
        cut = rng.randrange(len(text))
        bodies.append((text[:cut] + rng.choice(["", "\\", "\\ud800", "{", "\x00", "]"]) + text[cut:]).encode())
    for _ in range(100):  # random bytes and random JSON documents
        bodies.append(rng.randbytes(rng.randrange(200)))
        bodies.append(json.dumps(random_json_value(rng)).encode())
    paths = ["/push", "/v2/tokens/alice@example.com", "/v2/tokens/alice@example.com/push"]
    with trio.fail_after(120):
        for body in bodies:
            reply = await client.post(rng.choice(paths), content=body,
                                      headers={"content-type": "application/json"})
            statuses.append(reply.status_code)
            assert (sylk_shaped(reply.json())
                    or reply.request.url.path.startswith("/v2/tokens/alice@example.com") and reply.status_code < 500)
    # 5xx may only be a push service's verdict (502/504 for a failed/expired push).
    assert not [s for s in statuses if s >= 500 and s not in (502, 503, 504)]
    assert not tracebacks(caplog), [r.getMessage()[:200] for r in tracebacks(caplog)]
    await assert_every_push_logged(client)
    assert (await client.get("/health")).status_code == 200


async def assert_every_push_logged(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    with trio.fail_after(30):
        while total("pushsidecar_pushes_in_flight") > 0:
            await trio.sleep(0.1)
            text = (await client.get("/metrics")).text
    assert total("pushsidecar_pushes_received_total") == total("pushsidecar_outcomes_total")


async def test_fuzz_raw_connections_leave_the_server_healthy(
    sidecar: SidecarHandle, client: httpx.AsyncClient, caplog
) -> None:
    rng = random.Random(12)
    inputs = [rng.randbytes(rng.randrange(1, 400)) for _ in range(60)]
    inputs += [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(rng.randrange(50)) for _ in range(20)]
    inputs += [b"PRI * HTTP/2.0\r\n\r\n" + rng.randbytes(10) for _ in range(10)]  # broken preface
    answers: list[bytes] = []

    async def one(data: bytes) -> None:
        answers.append(await raw_exchange(sidecar.http_url, data, read_timeout=3.0, eof=True))

    with trio.fail_after(120):
        for start in range(0, len(inputs), 10):
            async with trio.open_nursery() as nursery:
                for data in inputs[start:start + 10]:
                    nursery.start_soon(one, data)
    for answer in answers:
        if answer.startswith(b"HTTP/1.1 "):
            code, body = status_and_body(answer)
            assert code < 500 and sylk_shaped(body), answer[:200]
    assert not tracebacks(caplog), [r.getMessage()[:200] for r in tracebacks(caplog)]
    assert (await client.get("/health")).status_code == 200


async def test_slow_clients_do_not_block_others(sidecar: SidecarHandle, client: httpx.AsyncClient) -> None:
    host, port = re.match(r"http://([^:/]+):(\d+)", sidecar.http_url).groups()
    slow = []
    for _ in range(20):  # each sends half a request and then nothing
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        slow.append(stream)
    try:
        with trio.fail_after(10):
            assert (await client.get("/health")).status_code == 200
    finally:
        for stream in slow:
            await stream.aclose()


async def test_fuzz_zmq_frames_are_counted_and_never_crash(
    sidecar: SidecarHandle, client: httpx.AsyncClient, caplog
) -> None:
    rng = random.Random(13)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(sidecar.zmq_endpoint)
    frames = []
    for _ in range(300):
        frames.append(rng.randbytes(rng.randrange(1, 200)))
        # surrogatepass: lone surrogates become invalid UTF-8 in the frame
        frames.append(msgpack.packb(random_json_value(rng), use_bin_type=True, unicode_errors="surrogatepass"))
        frames.append(msgpack.packb([rng.randrange(10), random_json_value(rng), random_json_value(rng)],
                                    unicode_errors="surrogatepass"))
    valid = {"v": wire.VERSION, "e": "incoming_session", "ci": "z", "f": "sip:a@b", "t": "sip:c@d",
             "ai": "com.example.app.prod", "pl": "apple", "tk": "ab" * 32, "mt": "audio", "ts": time.time()}
    for i in range(300):  # well-formed frames with one field made hostile
        message = dict(valid, ci=f"zf{i}")
        key = rng.choice(list(message))
        message[key] = rng.choice([random_json_value(rng), "x" * rng.randrange(2000, 20000), "\ud800",
                                   "a\x00b", -1, 1e300])
        frames.append(msgpack.packb(message, unicode_errors="surrogatepass"))
    try:
        for frame in frames:
            sock.send(frame)
        counters = sidecar.runtime.proxy_ingress.counters
        with trio.fail_after(30):
            while counters.frames < len(frames):
                await trio.sleep(0.05)
    finally:
        sock.close(linger=0)
        ctx.term()
    c = counters
    assert c.frames == c.accepted + c.bad + c.expired + c.duplicates + c.handler_errors
    assert c.handler_errors == 0
    assert c.accepted > 0 and sidecar.runtime.proxy_ingress.rejected > 0  # the fuzz reached admission
    assert not tracebacks(caplog), [r.getMessage()[:200] for r in tracebacks(caplog)]
    await assert_every_push_logged(client)


async def test_client_that_keeps_sending_after_the_413_leaves_no_traceback(sidecar: SidecarHandle, caplog) -> None:
    host, port = re.match(r"http://([^:/]+):(\d+)", sidecar.http_url).groups()
    stream = await trio.open_tcp_stream(host, int(port))
    answer = b""
    chunk = b"y" * 16384
    try:
        await stream.send_all(b"POST /push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        with trio.move_on_after(5):
            for _ in range(200):  # 3 MB, streamed, still sending after the answer
                await stream.send_all(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                with trio.move_on_after(0.005):
                    answer += await stream.receive_some(65536)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    code, body = status_and_body(answer)
    assert code == 413 and sylk_shaped(body)
    await trio.sleep(0.5)
    assert not tracebacks(caplog), [r.getMessage()[:300] for r in tracebacks(caplog)]
