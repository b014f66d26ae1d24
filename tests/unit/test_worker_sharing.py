"""What worker processes share: the ZeroMQ route, summed metrics, one token per credential."""

from __future__ import annotations

import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.observe.metrics import Metrics
from sidecar.observe.worker_metrics import WorkerMetrics, add_up
from sidecar.pns.apns_auth import ApnsTokenCache
from sidecar.pns.shared_tokens import SharedOAuthFetch
from sidecar.wire import encode_direct
from sidecar.workers import route


def frame(call_id: str, sent_at: float) -> bytes:
    return encode_direct("incoming_session", call_id, "sip:a@x", "sip:b@x", app_id="a.b",
                         platform="apple", token="ab" * 32, sent_at=sent_at, ttl=30)


def test_route_sends_every_copy_of_a_call_to_one_worker_and_spreads_calls():
    chosen = {route(frame(f"call-{n}", 1.0), 4) for n in range(200)}
    assert chosen == {0, 1, 2, 3}
    for n in range(50):  # a re-sent frame differs (its time) but goes to the same worker
        assert route(frame(f"call-{n}", 1.0), 4) == route(frame(f"call-{n}", 2.5), 4)
    assert route(b"\xc1 not msgpack", 4) == 0
    assert route(frame("x", 1.0), 1) == 0


def test_metrics_of_workers_add_up(tmp_path: Path):
    workers = [Metrics(version="9"), Metrics(version="9")]
    for index, metrics in enumerate(workers):
        for _ in range(index + 2):
            metrics.push_received("zmq")
        metrics.set_connections("apple:a.b", 1)
    shared = [WorkerMetrics(m, tmp_path, i, 2) for i, m in enumerate(workers)]
    shared[1].publish()
    workers[0].push_received("http")
    text = shared[0].render()[0].decode()
    assert 'pushsidecar_pushes_received_total{source="zmq"} 5.0' in text
    assert 'pushsidecar_pushes_received_total{source="http"} 1.0' in text
    assert 'pushsidecar_connections_open{service="apple:a.b"} 2.0' in text
    assert 'pushsidecar_info{version="9"} 1.0' in text  # a constant, not a sum
    # What a scraper parses back: the same families, summed once more is stable.
    assert add_up([text]) == text


async def test_one_oauth_fetch_for_two_workers(tmp_path: Path):
    fetches = []

    async def fetch():
        fetches.append(1)
        await trio.sleep(0.01)
        return f"token-{len(fetches)}", 3600.0

    first = SharedOAuthFetch(tmp_path, "sa@x/kid@https://t", fetch)
    second = SharedOAuthFetch(tmp_path, "sa@x/kid@https://t", fetch)
    async with trio.open_nursery() as nursery:
        results = []

        async def get(shared):
            results.append(await shared())

        nursery.start_soon(get, first)
        nursery.start_soon(get, second)
    assert len(fetches) == 1
    assert {token for token, _ in results} == {"token-1"}
    assert (tmp_path / "oauth-tokens.json").stat().st_mode & 0o777 == 0o600
    # Renewing: the token a worker replaces is never adopted again.
    token, _ = await first()
    assert token == "token-2" and len(fetches) == 2
    token, _ = await second()
    assert token == "token-2" and len(fetches) == 2  # adopted the other's new token


async def test_one_apns_token_for_two_workers_and_after_a_rejection(tmp_path: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    spool = tmp_path / "spool"
    wall = [time.time()]
    one = ApnsTokenCache(state_dir=spool, wall_clock=lambda: wall[0]).provider("TEAM", "KID", key_file)
    two = ApnsTokenCache(state_dir=spool, wall_clock=lambda: wall[0]).provider("TEAM", "KID", key_file)
    token = one.token()
    assert two.token() == token and one.renewals + two.renewals == 1
    # APNs refuses it: the first to notice signs a new one, the other adopts it.
    one.invalidate(token)
    two.invalidate(token)
    new = one.token()
    assert new != token and two.token() == new and one.renewals + two.renewals == 2
