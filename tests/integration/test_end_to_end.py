"""The whole sidecar (real HTTP server, real HTTP/2 + TLS to the simulator).

Each test starts the simulator and the sidecar on free loopback ports and
checks what the simulator recorded against what the client was answered.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio

from sidecar.model import session_id
from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import TOKEN, running_sidecar, sidecar_config


def sylk_body(creds: SimCredentials, **overrides) -> dict:
    body = {
        "app-id": f"{creds.token_bundle_id}.prod", "platform": "apple", "token": TOKEN,
        "call-id": "call-1@example.com", "from": "sip:alice@example.com",
        "to": "sip:bob@example.com", "event": "incoming_session", "media-type": "audio",
        "silent": True, "from-display-name": "Alice",
    }
    body.update(overrides)
    return body


def apns_records(sim: Simulator) -> list[dict]:
    return [r for r in sim.requests if r["path"].startswith("/3/device/")]


async def test_sylk_incoming_call_reaches_apns_with_token_auth(client: httpx.AsyncClient, sim: Simulator,
                                                               sim_credentials) -> None:
    before = time.time()
    answer = await client.post("/push", json=sylk_body(sim_credentials))
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["description"] == "push notification response"
    assert reply["data"]["code"] == 200 and reply["data"]["call_id"] == "call-1@example.com"
    [record] = apns_records(sim)
    headers = record["headers"]
    assert record["path"] == f"/3/device/{TOKEN}"
    assert headers["apns-topic"] == f"{sim_credentials.token_bundle_id}.voip"
    assert headers["apns-push-type"] == "voip"
    assert headers["apns-priority"] == "10"
    assert before + 30 < int(headers["apns-expiration"]) < time.time() + 3600  # absolute (FIX)
    assert record["status"] == 200
    body = record["body"]
    assert body["event"] == "incoming_session"
    assert body["call-id"] == "call-1@example.com"
    assert body["session-id"] == session_id("call-1@example.com")
    assert body["from_uri"] == "sip:alice@example.com" and body["to_uri"] == "sip:bob@example.com"
    assert body["from_display_name"] == "Alice" and body["media-type"] == "audio"


async def test_sylk_cancel_is_a_background_push(client: httpx.AsyncClient, sim: Simulator, sim_credentials) -> None:
    answer = await client.post("/push", json=sylk_body(sim_credentials, event="cancel", reason="caller hung up"))
    assert answer.status_code == 200, answer.text
    [record] = apns_records(sim)
    assert record["headers"]["apns-push-type"] == "background"
    assert record["headers"]["apns-priority"] == "5"
    assert record["headers"]["apns-topic"] == sim_credentials.token_bundle_id
    assert record["body"]["event"] == "cancel" and record["body"]["reason"] == "caller hung up"


async def test_linphone_with_certificate_auth(client: httpx.AsyncClient, sim: Simulator, sim_credentials) -> None:
    body = sylk_body(sim_credentials, **{"app-id": f"{sim_credentials.cert_bundle_id}.prod"})
    answer = await client.post("/push", json=body)
    assert answer.status_code == 200, answer.text
    [record] = apns_records(sim)
    assert "authorization" not in record["headers"]  # client certificate, no JWT
    assert record["headers"]["apns-topic"] == f"{sim_credentials.cert_bundle_id}.voip"
    assert record["body"]["aps"]["loc-key"] == "IC_SIL"


async def test_dead_token_reported_as_410(client: httpx.AsyncClient, sim: Simulator, sim_credentials) -> None:
    sim.dead_tokens.add(TOKEN)
    answer = await client.post("/push", json=sylk_body(sim_credentials))
    assert answer.status_code == 410
    assert answer.json()["data"]["code"] == 410


async def test_503_then_success_is_retried(client: httpx.AsyncClient, sim: Simulator, sim_credentials) -> None:
    sim.script_status([503])
    answer = await client.post("/push", json=sylk_body(sim_credentials))
    assert answer.status_code == 200, answer.text
    statuses = [r["status"] for r in apns_records(sim)]
    assert statuses == [503, 200]


async def test_429_honours_retry_after(client: httpx.AsyncClient, sim: Simulator, sim_credentials) -> None:
    sim.script_status([(429, {"retry-after": "1"})])
    started = trio.current_time()
    answer = await client.post("/push", json=sylk_body(sim_credentials))
    assert answer.status_code == 200, answer.text
    assert trio.current_time() - started >= 1.0
    assert [r["status"] for r in apns_records(sim)] == [429, 200]


async def test_1000_pushes_share_one_connection(client: httpx.AsyncClient, sim: Simulator, sim_credentials) -> None:
    answers: list[int] = []
    limiter = trio.CapacityLimiter(64)  # the client's own pool would queue (and time out) the rest

    async def send(i: int) -> None:
        async with limiter:
            reply = await client.post("/push", json=sylk_body(sim_credentials, **{"call-id": f"c{i}"}))
        answers.append(reply.status_code)

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(send, i)
    assert answers.count(200) == 1000
    assert len(apns_records(sim)) == 1000
    assert sim.stats().connections_accepted == 1
    # one JWT for every request
    jwts = {r["headers"].get("authorization") for r in apns_records(sim)}
    assert len(jwts) == 1


async def test_goaway_mid_flight_delivers_each_push_exactly_once(
    client: httpx.AsyncClient, sim: Simulator, sim_credentials
) -> None:
    # Warm the connection so the stream limit is lifted, then GOAWAY after 200 more streams.
    assert (await client.post("/push", json=sylk_body(sim_credentials, **{"call-id": "warm"}))).status_code == 200
    sim.goaway_after(200)
    answers: dict[str, int] = {}
    limiter = trio.CapacityLimiter(64)

    async def send(i: int) -> None:
        async with limiter:
            reply = await client.post("/push", json=sylk_body(sim_credentials, **{"call-id": f"g{i}"}))
        answers[f"g{i}"] = reply.status_code

    async with trio.open_nursery() as nursery:
        for i in range(500):
            nursery.start_soon(send, i)
    assert sorted(set(answers.values())) == [200]
    delivered = [r["body"]["call-id"] for r in apns_records(sim) if r["status"] == 200]
    assert sorted(c for c in delivered if c.startswith("g")) == sorted(answers)  # each exactly once
    assert sim.stats().goaways_sent >= 1
    assert sim.stats().connections_accepted >= 2


async def test_deadline_expiry_when_the_service_is_down(tmp_path: Path, sim: Simulator, sim_credentials) -> None:
    # Every answer is 503: the push keeps being retried until its deadline.
    sim.script_status([503] * 1000)
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    async with running_sidecar(config_dir) as handle:
        async with httpx.AsyncClient(base_url=handle.http_url, timeout=60) as http:
            # A custom short life is not part of v1, so use a push over ZeroMQ with ttl 2 s.
            from sidecar.wire import Sender, encode_direct

            sender = Sender(handle.zmq_endpoint)
            frame = encode_direct("incoming_session", "ttl-call", "sip:a@x", "sip:b@x",
                                  app_id=f"{sim_credentials.token_bundle_id}.prod", platform="apple",
                                  token=TOKEN, media_type="audio", ttl=2)
            assert sender.send(frame)
            with trio.fail_after(10):
                while handle.runtime.dispatcher.received < 1 or handle.runtime.dispatcher.in_flight:
                    await trio.sleep(0.05)
            sender.close()
            metrics = (await http.get("/metrics")).text
    counts = handle.runtime.dispatcher.counts
    assert sum(counts.values()) == 1
    from sidecar.model import OutcomeKind
    assert counts[OutcomeKind.FAILED] + counts[OutcomeKind.EXPIRED] == 1
    assert len(apns_records(sim)) >= 2  # it was retried before giving up
    assert "outcome" in metrics


async def test_access_list_refuses_before_anything(tmp_path: Path, sim: Simulator, sim_credentials) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    general = config_dir / "general.ini"
    general.write_text(general.read_text().replace("allowed_hosts =", "allowed_hosts = 10.9.9.0/24"))
    async with running_sidecar(config_dir) as handle:
        async with httpx.AsyncClient(base_url=handle.http_url) as http:
            answer = await http.post("/push", content=b"{not json")
    assert answer.status_code == 403
    assert answer.json() == {"code": 403, "description": "access denied by access list", "data": {}}
    assert apns_records(sim) == []


async def test_bad_bodies_get_the_sylk_shape(client: httpx.AsyncClient, sim: Simulator) -> None:
    for content in (b"", b"{broken", b"[1, 2]", b'{"app-id": 5}'):
        answer = await client.post("/push", content=content, headers={"content-type": "application/json"})
        assert answer.status_code == 400, content
        assert set(answer.json()) == {"code", "description", "data"}
    answer = await client.post("/push", content=b"x" * 200_000, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["code"] == 413
    assert apns_records(sim) == []


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric_name, _, label_text = sample.partition("{")
        have = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if metric_name == name and have == wanted:
            return float(value)
    return 0.0


async def test_metrics_follow_connections_renewals_store_and_zmq(
    client: httpx.AsyncClient, sidecar, sim: Simulator, sim_credentials
) -> None:
    app_id = f"{sim_credentials.token_bundle_id}.prod"
    assert (await client.post("/push", json=sylk_body(sim_credentials))).status_code == 200
    account = "alice@example.com"
    added = await client.post(f"/v2/tokens/{account}", json={
        "app-id": app_id, "platform": "apple", "token": TOKEN, "device-id": "d1"})
    assert added.status_code == 200
    from sidecar.wire import Sender

    sender = Sender(sidecar.zmq_endpoint)
    assert sender.send(b"not msgpack at all")
    with trio.fail_after(10):
        while sidecar.runtime.proxy_ingress.counters.bad < 1:
            await trio.sleep(0.02)
    sender.close()
    text = (await client.get("/metrics")).text
    service = f"apple:{app_id}"
    assert metric(text, "pushsidecar_connections_open", service=service) == 1
    assert metric(text, "pushsidecar_credential_renewals_total", service=service, kind="jwt") == 1
    assert metric(text, "pushsidecar_store_operations_total", backend="sqlite", operation="add") == 1
    assert metric(text, "pushsidecar_zmq_rejected_frames_total", reason="undecodable") == 1
    assert metric(text, "pushsidecar_outcomes_total", app=app_id, platform="apple", outcome="delivered") == 1
    # A second scrape does not count the same totals again.
    again = (await client.get("/metrics")).text
    assert metric(again, "pushsidecar_credential_renewals_total", service=service, kind="jwt") == 1
