"""The v2 HTTP API: token storage per account and fan-out pushes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from sidecar.apps.linphone import LinphoneAppType
from sidecar.apps.sylk import SylkAppType
from sidecar.config import AppConfig, Settings
from sidecar.ingress.http import create_http_app
from sidecar.ingress.http_v2 import normalize_device_id, split_apple_token
from sidecar.model import Outcome, OutcomeKind
from sidecar.store.base import DeviceRecord, StoreUnavailable, TokenStore


class MemoryStore(TokenStore):
    def __init__(self):
        self.records: dict[tuple[str, str, str], DeviceRecord] = {}
        self.down = False

    def _check(self):
        if self.down:
            raise StoreUnavailable("cassandra: no hosts available")

    async def add(self, record):
        self._check()
        self.records[(record.account, record.app_id, record.device_id)] = record

    async def remove(self, account, app_id, device_id=None):
        self._check()
        keys = [k for k in self.records
                if k[0] == account and k[1] == app_id and device_id in (None, k[2])]
        for key in keys:
            del self.records[key]
        return len(keys)

    async def devices(self, account):
        self._check()
        return [r for k, r in self.records.items() if k[0] == account]


def make_settings() -> Settings:
    apps = [
        AppConfig(section="a", app_id="com.ag.sylk", app_type="sylk", platform="apple"),
        AppConfig(section="b", app_id="com.ag.sylk", app_type="sylk", platform="firebase"),
        AppConfig(section="c", app_id="org.linphone", app_type="linphone", platform="apple"),
    ]
    return Settings(config_dir=Path("/nonexistent"), applications={a.key: a for a in apps})


class FakeRuntime:
    """Dispatch answers from a script keyed by token; records the pushes and their timing."""

    def __init__(self, script=None, delay=0.0):
        self.settings = make_settings()
        self.app_types = {"sylk": SylkAppType(), "linphone": LinphoneAppType()}
        self.store = MemoryStore()
        self.script = script or {}
        self.delay = delay
        self.dispatched = []
        self.running = 0
        self.max_running = 0

    async def dispatch(self, push, app, app_type):
        self.dispatched.append(push)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        await trio.sleep(self.delay)
        self.running -= 1
        return self.script.get(push.token, Outcome(OutcomeKind.DELIVERED, 200, "OK"))

    def spawn(self, push, app, app_type):
        raise AssertionError("v2 pushes are awaited")


def client_for(runtime):
    transport = httpx.ASGITransport(app=create_http_app(runtime), client=("127.0.0.1", 1))
    return httpx.AsyncClient(transport=transport, base_url="http://sidecar")


def add_body(**changes):
    body = {"app-id": "com.ag.sylk", "platform": "apple", "token": "voip1-regular1",
            "device-id": "dev-1", "silent": "1", "user-agent": "None"}
    body.update(changes)
    return body


PUSH_BODY = {"call-id": "c-1", "from": "sip:a@example.com", "to": "sip:bob@example.com",
             "event": "incoming_session", "media-type": "audio", "reason": None,
             "filename": None, "filetype": None}

ACCOUNT = "bob@example.com"


def assert_sylk_shape(response, status):
    body = response.json()
    assert response.status_code == status and body["code"] == status
    assert set(body) == {"code", "description", "data"}
    return body


# -- pure helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("<urn:uuid:0a1b-2c3d>", "0a1b-2c3d"),
    ("<URN:UUID:abcd>", "abcd"),
    ("android", "android"),  # ends with d: the original cut it to "androi"
    ("iphone-run", "iphone-run"),
    ("urn:uuid:abc", "urn:uuid:abc"),
    ("<urn:uuid:abc", "<urn:uuid:abc"),
])
def test_normalize_device_id(raw, expected):
    assert normalize_device_id(raw) == expected


def test_split_apple_token():
    assert split_apple_token("aa-bb-cc") == ("aa", "bb-cc")
    assert split_apple_token("aabb") == ("aabb", None)
    assert split_apple_token("aa-") == ("aa-", None)


# -- add / remove --------------------------------------------------------------------------------------


async def test_add_stores_split_apple_token_and_echoes():
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        response = await client.post(f"/v2/tokens/{ACCOUNT}",
                                      json=add_body(**{"device-id": "<urn:uuid:dead-beef>"}))
    assert response.status_code == 200
    assert response.json() == {"app-id": "com.ag.sylk", "platform": "apple",
                               "token": "voip1-regular1", "device-id": "dead-beef",
                               "silent": True, "user-agent": "None"}
    record, = runtime.store.records.values()
    assert record == DeviceRecord(account=ACCOUNT, app_id="com.ag.sylk", device_id="dead-beef",
                                  platform="apple", device_token="voip1",
                                  background_token="regular1", silent=True, user_agent="None")


async def test_add_firebase_keeps_token_whole_and_replaces_same_device():
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        for token in ("fcm-token-1", "fcm-token-2"):
            body = add_body(platform="android", token=token, silent=0)
            assert (await client.post(f"/v2/tokens/{ACCOUNT}", json=body)).status_code == 200
    record, = runtime.store.records.values()
    assert (record.platform, record.device_token, record.background_token, record.silent) == (
        "firebase", "fcm-token-2", None, False)


@pytest.mark.parametrize(("account", "body", "status", "fragment"), [
    ("bob.example.com", add_body(), 400, "user@domain"),
    (ACCOUNT, add_body(**{"device-id": None}), 400, "Field 'device-id' required"),
    (ACCOUNT, add_body(token=None), 400, "Field 'token' required"),
    (ACCOUNT, add_body(platform="palm"), 404, "'palm' platform is not configured"),
    (ACCOUNT, add_body(**{"app-id": "com.nope"}), 404, "Apple com.nope app is not configured"),
    (ACCOUNT, add_body(silent="often"), 400, "Field 'silent' must be a boolean"),
])
async def test_add_validation(account, body, status, fragment):
    body = {k: v for k, v in body.items() if v is not None}
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        response = await client.post(f"/v2/tokens/{account}", json=body)
    assert fragment in assert_sylk_shape(response, status)["description"]
    assert runtime.store.records == {}


async def test_remove():
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        async def delete(account, body):
            return await client.request("DELETE", f"/v2/tokens/{account}", json=body)

        response = await delete(ACCOUNT, {"app-id": "com.ag.sylk", "device-id": "dev-1"})
        assert (response.status_code, response.json()) == (404, {"result": "User not found"})
        await client.post(f"/v2/tokens/{ACCOUNT}", json=add_body())
        response = await delete(ACCOUNT, {"app-id": "com.ag.sylk", "device-id": "other"})
        assert (response.status_code, response.json()) == (404, {"result": "Not found"})
        response = await delete(ACCOUNT, {"app-id": "com.ag.sylk",
                                          "device-id": "<urn:uuid:dev-1>"})
        assert response.status_code == 200
        assert response.json() == {"app-id": "com.ag.sylk", "device-id": "dev-1"}
        assert runtime.store.records == {}
        assert_sylk_shape(await delete(ACCOUNT, {"device-id": "x"}), 400)
        assert_sylk_shape(await delete("nobody", {"app-id": "a"}), 400)


async def test_store_unavailable_is_503():
    runtime = FakeRuntime()
    runtime.store.down = True
    async with client_for(runtime) as client:
        for response in (
            await client.post(f"/v2/tokens/{ACCOUNT}", json=add_body()),
            await client.request("DELETE", f"/v2/tokens/{ACCOUNT}", json={"app-id": "x"}),
            await client.post(f"/v2/tokens/{ACCOUNT}/push", json=PUSH_BODY),
        ):
            body = assert_sylk_shape(response, 503)
            assert "token storage unavailable" in body["description"]
            assert "no hosts available" in body["description"]


# -- push --------------------------------------------------------------------------------------------


async def add_devices(client):
    await client.post(f"/v2/tokens/{ACCOUNT}", json=add_body())
    await client.post(f"/v2/tokens/{ACCOUNT}", json=add_body(
        platform="firebase", token="fcm-tok", **{"device-id": "dev-2"}, silent="0"))
    await client.post(f"/v2/tokens/{ACCOUNT}", json=add_body(
        **{"app-id": "org.linphone", "device-id": "dev-3", "token": "lin-tok"}))


async def test_push_fans_out_concurrently_with_stored_fields(autojump_clock):
    # No real I/O here (ASGITransport), so virtual time measures the fan-out exactly.
    runtime = FakeRuntime(delay=10.0)
    async with client_for(runtime) as client:
        await add_devices(client)
        started = trio.current_time()
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push", json=PUSH_BODY)
        elapsed = trio.current_time() - started
    body = assert_sylk_shape(response, 200)
    assert body["description"] == "push notification responses"
    assert runtime.max_running == 3
    assert elapsed == pytest.approx(10.0)  # concurrently, not 3 x 10 s
    by_device = {entry["device_id"]: entry for entry in body["data"]}
    assert set(by_device) == {"dev-1", "dev-2", "dev-3"}
    assert by_device["dev-1"]["token"] == "voip1" and by_device["dev-1"]["platform"] == "apple"
    assert by_device["dev-2"]["platform"] == "firebase"
    pushes = {p.device_id: p for p in runtime.dispatched}
    assert pushes["dev-2"].silent is False and pushes["dev-1"].silent is True
    assert pushes["dev-3"].app_id == "org.linphone" and pushes["dev-3"].source == "http-v2"
    assert all(p.call_id == "c-1" and p.to_uri == "sip:bob@example.com" for p in pushes.values())


@pytest.mark.parametrize("event", ["cancel", "message"])
async def test_cancel_and_message_use_the_background_token(event):
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        await add_devices(client)
        body = {**PUSH_BODY, "event": event, "media-type": "sms", "reason": "answered"}
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push/dev-1", json=body)
    assert_sylk_shape(response, 200)
    push, = runtime.dispatched
    assert push.token == "regular1" and push.event.value == event


async def test_push_to_one_device_and_not_found_cases():
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push", json=PUSH_BODY)
        body = assert_sylk_shape(response, 404)
        assert body["description"] == "Push request was not sent: user not found"
        await add_devices(client)
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push/dev-9", json=PUSH_BODY)
        body = assert_sylk_shape(response, 404)
        assert body["description"] == "Push request was not sent: device not found"
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push/<urn:uuid:dev-2>",
                                     json=PUSH_BODY)
        assert [e["device_id"] for e in assert_sylk_shape(response, 200)["data"]] == ["dev-2"]
    assert [p.device_id for p in runtime.dispatched] == ["dev-2"]


async def test_dead_token_is_removed_and_reported():
    dead = Outcome(OutcomeKind.TOKEN_DEAD, 410, "Unregistered")
    runtime = FakeRuntime(script={"fcm-tok": dead})
    async with client_for(runtime) as client:
        await add_devices(client)
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push", json=PUSH_BODY)
    data = {e["device_id"]: e for e in assert_sylk_shape(response, 200)["data"]}
    assert data["dev-2"]["code"] == 410 and data["dev-2"]["token_removed"] is True
    assert data["dev-1"]["token_removed"] is False
    assert {k[2] for k in runtime.store.records} == {"dev-1", "dev-3"}


async def test_all_failed_reports_the_first_code():
    failed = Outcome(OutcomeKind.FAILED, 503, "ServiceUnavailable")
    runtime = FakeRuntime(script={"voip1": failed})
    async with client_for(runtime) as client:
        await client.post(f"/v2/tokens/{ACCOUNT}", json=add_body())
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push", json=PUSH_BODY)
    assert assert_sylk_shape(response, 503)["data"][0]["reason"] == "ServiceUnavailable"


async def test_device_of_unconfigured_app_gets_its_own_error():
    runtime = FakeRuntime()
    await runtime.store.add(DeviceRecord(account=ACCOUNT, app_id="com.gone", device_id="old",
                                         platform="apple", device_token="t"))
    async with client_for(runtime) as client:
        await client.post(f"/v2/tokens/{ACCOUNT}", json=add_body())
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push", json=PUSH_BODY)
    data = {e["device_id"]: e for e in assert_sylk_shape(response, 200)["data"]}
    assert data["old"]["code"] == 404
    assert data["old"]["reason"] == "Apple com.gone app is not configured"
    assert data["dev-1"]["code"] == 200


@pytest.mark.parametrize(("change", "status", "fragment"), [
    ({"call-id": None}, 400, "Field 'call-id' required"),
    ({"from": None}, 400, "Field 'from' required"),
    ({"to": None}, 400, "Field 'to' required"),
    ({"badge": "lots"}, 400, "Field 'badge' must be an integer"),
])
async def test_push_validation(change, status, fragment):
    body = {k: v for k, v in {**PUSH_BODY, **change}.items() if v is not None}
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        await add_devices(client)
        response = await client.post(f"/v2/tokens/{ACCOUNT}/push", json=body)
    assert fragment in assert_sylk_shape(response, status)["description"]
    assert runtime.dispatched == []


async def test_push_bad_account_and_bad_json():
    async with client_for(FakeRuntime()) as client:
        assert_sylk_shape(await client.post("/v2/tokens/nobody/push", json=PUSH_BODY), 400)
        assert_sylk_shape(await client.post(f"/v2/tokens/{ACCOUNT}/push", content=b"{"), 400)
        assert_sylk_shape(await client.put(f"/v2/tokens/{ACCOUNT}", json={}), 405)
