"""The v2 token API through the real sidecar, on SQLite and on Cassandra.

Each test runs the whole sidecar (``run_sidecar``: Hypercorn, the store from
general.ini, HTTP/2 + TLS to the simulator) against one backend; the same
tests run for both.  Cassandra is reached through a TCP proxy so a test can
take it "down" (the proxy drops every connection) and bring it back; SQLite
is made unavailable by another connection holding its write lock.

Cassandra needs PUSHSIDECAR_CASSANDRA=1 (or PUSHSIDECAR_CASSANDRA_HOST); the
Cassandra cases are otherwise skipped with the reason printed (-rs).
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio

from sidecar.config import CassandraSettings
from sidecar.service import SidecarHandle
from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator
from sidecar.store.sqlite import default_path

from sidecar_fixtures import running_sidecar, sidecar_config
from store_fixtures import CassandraNode, TcpProxy, unique_account

VOIP = "a1" * 32
REGULAR = "b2" * 32
LINPHONE = "c3" * 32
FCM = "fcm-token-0001"

PUSH_BODY = {
    "call-id": "call-v2@example.com", "from": "sip:alice@example.com",
    "to": "sip:bob@example.com", "event": "incoming_session", "media-type": "audio",
    "from-display-name": "Alice",
}


# -- backends -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def api_cassandra_settings(cassandra_node: CassandraNode) -> CassandraSettings:
    """A keyspace of its own for this session (schema created first), dropped at the end."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    from sidecar.store.cassandra import DEFAULT_PROTOCOL_VERSION, init_schema

    settings = CassandraSettings(
        contact_points=((cassandra_node.host, cassandra_node.port),),
        keyspace=f"pushsidecar_api_{uuid.uuid4().hex[:10]}",
        consistency="ONE",
    )
    trio.run(init_schema, settings, {"class": "SimpleStrategy", "replication_factor": 1})
    yield settings
    cluster = Cluster(contact_points=list(settings.contact_points),
                      protocol_version=DEFAULT_PROTOCOL_VERSION,
                      execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(
                          load_balancing_policy=DCAwareRoundRobinPolicy(), request_timeout=60)})
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {settings.keyspace}")
    finally:
        cluster.shutdown()


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, CassandraSettings | None]:
    # Sync on purpose: the Cassandra session fixture calls trio.run.
    if request.param == "cassandra":
        return request.param, request.getfixturevalue("api_cassandra_settings")
    return request.param, None


@dataclass
class ApiBackend:
    """The running sidecar on one backend, and how to take its store away."""

    kind: str
    handle: SidecarHandle
    client: httpx.AsyncClient
    make_unavailable: Callable[[], Awaitable[None]]
    make_available: Callable[[], Awaitable[None]]


@pytest.fixture
async def api(
    backend_kind, tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials, nursery
) -> AsyncIterator[ApiBackend]:
    kind, cassandra = backend_kind
    extra = ""
    proxy: TcpProxy | None = None
    blocker: list[sqlite3.Connection] = []
    if kind == "cassandra":
        assert cassandra is not None
        proxy = TcpProxy(*cassandra.contact_points[0])
        await proxy.start(nursery)
        extra = (
            f"\n[Cassandra]\ncluster_contact_points = 127.0.0.1:{proxy.port}\n"
            f"keyspace = {cassandra.keyspace}\nconsistency = ONE\n"
        )
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port, extra_general=extra)

    proxy_down = False

    async def make_unavailable() -> None:
        nonlocal proxy_down
        if proxy is not None:
            proxy.stop()
            proxy_down = True
            await trio.sleep(0.2)  # let the driver see its sockets close
        else:
            conn = sqlite3.connect(default_path(config_dir / "spool"), isolation_level=None, timeout=0)
            conn.execute("BEGIN EXCLUSIVE")
            blocker.append(conn)

    async def make_available() -> None:
        nonlocal proxy_down
        if proxy is not None and proxy_down:
            await proxy.start(nursery)  # same port: the driver finds it again
            proxy_down = False
        for conn in blocker:
            conn.execute("ROLLBACK")
            conn.close()
        blocker.clear()

    try:
        async with running_sidecar(config_dir) as handle:
            store_name = type(handle.runtime.store.inner).__name__  # behind the metrics wrapper
            assert store_name == {"sqlite": "SqliteTokenStore", "cassandra": "CassandraTokenStore"}[kind]
            async with httpx.AsyncClient(base_url=handle.http_url, timeout=30) as client:
                yield ApiBackend(kind, handle, client, make_unavailable, make_available)
    finally:
        await make_available()
        if proxy is not None:
            proxy.stop()


# -- helpers ------------------------------------------------------------------------


def sylk_shape(answer: httpx.Response, status: int) -> dict:
    body = answer.json()
    assert answer.status_code == status, answer.text
    assert set(body) == {"code", "description", "data"} and body["code"] == status
    return body


def apple_app(creds: SimCredentials) -> str:
    return f"{creds.token_bundle_id}.prod"


async def add_three_devices(api: ApiBackend, creds: SimCredentials, account: str) -> None:
    """An iPhone (voip + background token), an Android phone, a Linphone iPhone."""
    bodies = [
        {"app-id": apple_app(creds), "platform": "apple", "token": f"{VOIP}-{REGULAR}",
         "device-id": "<urn:uuid:iphone-1>", "silent": "1", "user-agent": "Sylk iOS"},
        {"app-id": apple_app(creds), "platform": "firebase", "token": FCM,
         "device-id": "android-1", "silent": "0"},
        {"app-id": f"{creds.cert_bundle_id}.prod", "platform": "apple", "token": LINPHONE,
         "device-id": "linphone-1"},
    ]
    for body in bodies:
        answer = await api.client.post(f"/v2/tokens/{account}", json=body)
        assert answer.status_code == 200, answer.text


def apns_records(sim: Simulator) -> list[dict]:
    return [r for r in sim.requests if r["path"].startswith("/3/device/")]


def fcm_records(sim: Simulator) -> list[dict]:
    return [r for r in sim.requests if r["path"].endswith("/messages:send")]


def delivered_tokens(sim: Simulator) -> set[str]:
    tokens = {r["path"].removeprefix("/3/device/") for r in apns_records(sim)}
    return tokens | {r["body"]["message"]["token"] for r in fcm_records(sim)}


# -- tests --------------------------------------------------------------------------


async def test_add_replace_and_remove(api: ApiBackend, sim_credentials) -> None:
    account = unique_account("v2")
    store = api.handle.runtime.store
    await add_three_devices(api, sim_credentials, account)

    devices = {d.device_id: d for d in await store.devices(account)}
    assert set(devices) == {"iphone-1", "android-1", "linphone-1"}  # urn:uuid stripped
    iphone = devices["iphone-1"]
    assert (iphone.device_token, iphone.background_token) == (VOIP, REGULAR)
    assert iphone.platform == "apple" and iphone.user_agent == "Sylk iOS" and iphone.silent
    assert devices["android-1"].silent is False and devices["android-1"].background_token is None

    # Adding the same (app-id, device-id) again replaces the token.
    answer = await api.client.post(f"/v2/tokens/{account}", json={
        "app-id": apple_app(sim_credentials), "platform": "firebase", "token": "fcm-token-0002",
        "device-id": "android-1"})
    assert answer.status_code == 200
    assert answer.json()["token"] == "fcm-token-0002" and answer.json()["device-id"] == "android-1"
    devices = {d.device_id: d for d in await store.devices(account)}
    assert len(devices) == 3 and devices["android-1"].device_token == "fcm-token-0002"

    remove = {"app-id": f"{sim_credentials.cert_bundle_id}.prod", "device-id": "linphone-1"}
    answer = await api.client.request("DELETE", f"/v2/tokens/{account}", json=remove)
    assert answer.status_code == 200 and answer.json() == remove
    answer = await api.client.request("DELETE", f"/v2/tokens/{account}", json=remove)
    assert answer.status_code == 404 and answer.json() == {"result": "Not found"}
    # Without device-id: every device of that app-id (the iPhone and the Android phone).
    answer = await api.client.request(
        "DELETE", f"/v2/tokens/{account}", json={"app-id": apple_app(sim_credentials)})
    assert answer.status_code == 200
    assert await store.devices(account) == []
    answer = await api.client.request("DELETE", f"/v2/tokens/{account}", json=remove)
    assert answer.status_code == 404 and answer.json() == {"result": "User not found"}


async def test_push_reaches_every_device_concurrently(api: ApiBackend, sim: Simulator, sim_credentials) -> None:
    account = unique_account("fanout")
    await add_three_devices(api, sim_credentials, account)
    sim.delay = 0.6  # each answer takes this long: one after the other would be >= 1.8 s
    started = trio.current_time()
    answer = await api.client.post(f"/v2/tokens/{account}/push", json=PUSH_BODY)
    elapsed = trio.current_time() - started
    body = sylk_shape(answer, 200)
    assert body["description"] == "push notification responses"
    by_device = {entry["device_id"]: entry for entry in body["data"]}
    assert set(by_device) == {"iphone-1", "android-1", "linphone-1"}
    assert {entry["code"] for entry in body["data"]} == {200}
    assert elapsed < 1.5, f"fan-out took {elapsed:.2f} s: not concurrent"
    assert delivered_tokens(sim) == {VOIP, FCM, LINPHONE}
    voip = next(r for r in apns_records(sim) if r["path"].endswith(VOIP))
    assert voip["headers"]["apns-push-type"] == "voip"
    assert voip["body"]["call-id"] == "call-v2@example.com"
    [fcm] = fcm_records(sim)
    assert fcm["body"]["message"]["data"]["event"] == "incoming_session"


async def test_push_to_one_device(api: ApiBackend, sim: Simulator, sim_credentials) -> None:
    account = unique_account("one")
    await add_three_devices(api, sim_credentials, account)
    answer = await api.client.post(f"/v2/tokens/{account}/push/android-1", json=PUSH_BODY)
    assert [e["device_id"] for e in sylk_shape(answer, 200)["data"]] == ["android-1"]
    assert delivered_tokens(sim) == {FCM}
    answer = await api.client.post(f"/v2/tokens/{account}/push/nowhere-9", json=PUSH_BODY)
    assert sylk_shape(answer, 404)["description"] == "Push request was not sent: device not found"
    answer = await api.client.post(f"/v2/tokens/{unique_account('nobody')}/push", json=PUSH_BODY)
    assert sylk_shape(answer, 404)["description"] == "Push request was not sent: user not found"
    assert len(apns_records(sim)) + len(fcm_records(sim)) == 1


async def test_dead_token_is_removed_and_reported(api: ApiBackend, sim: Simulator, sim_credentials) -> None:
    account = unique_account("dead")
    await add_three_devices(api, sim_credentials, account)
    sim.dead_tokens.add(FCM)
    answer = await api.client.post(f"/v2/tokens/{account}/push", json=PUSH_BODY)
    data = {e["device_id"]: e for e in sylk_shape(answer, 200)["data"]}
    # FCM's 404 UNREGISTERED is reported as Sylk's dead-token 410.
    assert data["android-1"]["code"] == 410 and data["android-1"]["token_removed"] is True
    assert data["iphone-1"]["code"] == 200 and data["iphone-1"]["token_removed"] is False
    stored = {d.device_id for d in await api.handle.runtime.store.devices(account)}
    assert stored == {"iphone-1", "linphone-1"}
    # The next push no longer tries the dead token.
    sim.reset()
    answer = await api.client.post(f"/v2/tokens/{account}/push", json=PUSH_BODY)
    assert {e["device_id"] for e in sylk_shape(answer, 200)["data"]} == {"iphone-1", "linphone-1"}
    assert FCM not in delivered_tokens(sim)


async def test_cancel_uses_the_background_token(api: ApiBackend, sim: Simulator, sim_credentials) -> None:
    account = unique_account("cancel")
    await add_three_devices(api, sim_credentials, account)
    body = {**PUSH_BODY, "event": "cancel", "reason": "answered elsewhere"}
    answer = await api.client.post(f"/v2/tokens/{account}/push/iphone-1", json=body)
    [entry] = sylk_shape(answer, 200)["data"]
    assert entry["token"] == REGULAR
    [record] = apns_records(sim)
    assert record["path"] == f"/3/device/{REGULAR}"
    assert record["headers"]["apns-push-type"] == "background"
    assert record["body"]["event"] == "cancel"


async def test_account_without_at_is_400(api: ApiBackend, sim: Simulator, sim_credentials) -> None:
    add = {"app-id": apple_app(sim_credentials), "platform": "firebase", "token": FCM, "device-id": "d"}
    for answer in (
        await api.client.post("/v2/tokens/nobody", json=add),
        await api.client.post("/v2/tokens/nobody/push", json=PUSH_BODY),
        await api.client.request("DELETE", "/v2/tokens/nobody", json={"app-id": "x"}),
    ):
        assert "nobody" in sylk_shape(answer, 400)["description"]
    assert len(sim.requests) == 0


async def test_unknown_app_is_404(api: ApiBackend, sim_credentials) -> None:
    account = unique_account("unknown")
    answer = await api.client.post(f"/v2/tokens/{account}", json={
        "app-id": "com.example.unknown", "platform": "apple", "token": VOIP, "device-id": "d"})
    assert "com.example.unknown app is not configured" in sylk_shape(answer, 404)["description"]
    assert await api.handle.runtime.store.devices(account) == []


async def test_store_outage_is_503_then_recovers(api: ApiBackend, sim: Simulator, sim_credentials) -> None:
    account = unique_account("outage")
    await add_three_devices(api, sim_credentials, account)
    add = {"app-id": apple_app(sim_credentials), "platform": "firebase", "token": "fcm-token-0003",
           "device-id": "android-2"}

    await api.make_unavailable()
    with trio.fail_after(20):  # SQLite waits out its 5 s busy_timeout first
        answer = await api.client.post(f"/v2/tokens/{account}", json=add)
    assert "token storage unavailable" in sylk_shape(answer, 503)["description"]
    if api.kind == "cassandra":
        # Reads need the cluster too (SQLite's WAL readers are not blocked by a writer).
        answer = await api.client.post(f"/v2/tokens/{account}/push", json=PUSH_BODY)
        assert "token storage unavailable" in sylk_shape(answer, 503)["description"]
        assert len(sim.requests) == 0

    await api.make_available()
    with trio.fail_after(60):  # the driver reconnects with its back-off
        while (answer := await api.client.post(f"/v2/tokens/{account}", json=add)).status_code != 200:
            sylk_shape(answer, 503)
            await trio.sleep(0.2)
    answer = await api.client.post(f"/v2/tokens/{account}/push", json=PUSH_BODY)
    assert len(sylk_shape(answer, 200)["data"]) == 4
    assert "fcm-token-0003" in delivered_tokens(sim)
