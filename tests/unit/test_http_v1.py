"""The v1 HTTP API: POST /push, health, error shapes, access list, body limit, Hypercorn.

Every test that goes through :func:`client_for` runs twice: through the ASGI
application as Hypercorn serves it, and through the fast HTTP/1.1 server
(httptools and our connection loop, over a real socket pair).
"""

from __future__ import annotations

import ipaddress
import json
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from sidecar.apps.linphone import LinphoneAppType
from sidecar.apps.sylk import SylkAppType
from sidecar.config import AppConfig, Settings
from sidecar.ingress.access import is_allowed
from sidecar.ingress.http import create_http_app
from sidecar.model import Outcome, OutcomeKind

from fast_transport import FastServerTransport


def make_settings(**changes) -> Settings:
    apps = [
        AppConfig(section="a", app_id="com.ag.sylk", app_type="sylk", platform="apple"),
        AppConfig(section="b", app_id="com.ag.sylk", app_type="sylk", platform="firebase"),
        AppConfig(section="c", app_id="org.linphone", app_type="linphone", platform="apple"),
    ]
    return Settings(config_dir=Path("/nonexistent"), applications={a.key: a for a in apps},
                    **changes)


class FakeRuntime:
    """Records what the HTTP layer hands over; answers with a scripted outcome."""

    def __init__(self, settings: Settings | None = None, outcome: Outcome | None = None):
        self.settings = settings or make_settings()
        self.app_types = {"sylk": SylkAppType(), "linphone": LinphoneAppType()}
        self.store = None
        self.outcome = outcome or Outcome(OutcomeKind.DELIVERED, 200, "OK",
                                          url="https://apns/3/device/tok")
        self.dispatched: list = []
        self.spawned: list = []

    async def dispatch(self, push, app, app_type):
        self.dispatched.append((push, app, app_type))
        await trio.lowlevel.checkpoint()
        return self.outcome

    def spawn(self, push, app, app_type):
        self.spawned.append((push, app, app_type))


SYLK_BODY = {
    "app-id": "com.ag.sylk", "platform": "ios", "token": "tok", "call-id": "call-1",
    "from": "sip:alice@example.com", "to": "sip:bob@example.com", "event": "incoming_session",
    "media-type": "audio", "silent": "1", "device-id": "dev-1", "reason": None,
}


SERVER_PATH = {"name": "asgi"}


@pytest.fixture(autouse=True, params=["asgi", "fast"])
def server_path(request):
    """Which server answers the requests of ``client_for``: the ASGI app
    (Hypercorn's path) or the fast HTTP/1.1 server."""
    SERVER_PATH["name"] = request.param
    yield request.param
    SERVER_PATH["name"] = "asgi"


def client_for(runtime, client_addr=("127.0.0.1", 5000)) -> httpx.AsyncClient:
    if SERVER_PATH["name"] == "fast":
        transport = FastServerTransport(runtime, client_addr)
    else:
        transport = httpx.ASGITransport(app=create_http_app(runtime), client=client_addr)
    return httpx.AsyncClient(transport=transport, base_url="http://sidecar")


async def post_push(runtime, body, **kwargs):
    async with client_for(runtime, **kwargs) as client:
        if isinstance(body, (bytes, str)):
            return await client.post("/push", content=body,
                                     headers={"content-type": "application/json"})
        return await client.post("/push", json=body)


def assert_sylk_shape(response, status, description=None):
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"code", "description", "data"}, body
    assert body["code"] == status
    assert isinstance(body["description"], str)
    if description is not None:
        assert body["description"] == description
    return body


# -- the push path --------------------------------------------------------------------------------


async def test_push_waits_for_the_outcome():
    runtime = FakeRuntime()
    response = await post_push(runtime, SYLK_BODY)
    body = assert_sylk_shape(response, 200, "push notification response")
    assert body["data"] == {"code": 200, "reason": "OK", "url": "https://apns/3/device/tok",
                            "platform": "apple", "call_id": "call-1", "token": "tok", "body": {}}
    (push, app, app_type), = runtime.dispatched
    assert push.silent is True and push.device_id == "dev-1" and push.source == "http"
    assert app.key == ("com.ag.sylk", "apple") and app_type.name == "sylk"
    assert push.deadline > trio.current_time() + 40  # a call push lives ~45 s


async def test_http_status_is_the_push_result_code():
    runtime = FakeRuntime(outcome=Outcome(OutcomeKind.TOKEN_DEAD, 410, "Unregistered",
                                          body={"reason": "Unregistered"}))
    body = assert_sylk_shape(await post_push(runtime, SYLK_BODY), 410)
    assert body["data"]["code"] == 410 and body["data"]["body"] == {"reason": "Unregistered"}


async def test_a_code_that_is_no_http_status_answers_502():
    runtime = FakeRuntime(outcome=Outcome(OutcomeKind.FAILED, 0, "connection refused"))
    body = assert_sylk_shape(await post_push(runtime, SYLK_BODY), 502)
    assert body["data"]["code"] == 0 and body["data"]["reason"] == "connection refused"


async def test_return_async_false_answers_202_and_spawns():
    runtime = FakeRuntime(make_settings(return_async=False))
    response = await post_push(runtime, SYLK_BODY)
    assert_sylk_shape(response, 202, "accepted for delivery")
    assert len(runtime.spawned) == 1 and runtime.dispatched == []


async def test_settings_are_read_per_request():
    runtime = FakeRuntime()
    async with client_for(runtime) as client:
        assert (await client.post("/push", json=SYLK_BODY)).status_code == 200
        runtime.settings = make_settings(return_async=False)
        assert (await client.post("/push", json=SYLK_BODY)).status_code == 202


async def test_what_sylkserver_sends_is_accepted():
    body = {"app-id": "com.ag.sylk", "platform": "firebase", "token": "t", "call-id": "m-1",
            "from": "sip:a@b", "to": "sip:c@d", "event": "message", "media-type": "sms",
            "silent": 0, "from-display-name": None, "badge": "2", "content": "hi",
            "content-type": "text/plain"}
    runtime = FakeRuntime()
    assert_sylk_shape(await post_push(runtime, body), 200)
    push = runtime.dispatched[0][0]
    assert (push.silent, push.badge, push.from_display_name) == (False, 2, None)


async def test_linphone_request_without_event_and_to():
    body = {"app-id": "org.linphone", "platform": "apple", "token": "t", "call-id": "c",
            "from": "sip:a@b", "media-type": "audio"}
    runtime = FakeRuntime()
    assert_sylk_shape(await post_push(runtime, body), 200)
    assert runtime.dispatched[0][0].event.value == "incoming_session"


async def test_a_bug_in_dispatch_answers_500_in_sylk_shape():
    class BrokenRuntime(FakeRuntime):
        async def dispatch(self, push, app, app_type):
            raise RuntimeError("secret internals")

    body = assert_sylk_shape(await post_push(BrokenRuntime(), SYLK_BODY), 500)
    assert "secret internals" not in json.dumps(body)


async def test_the_documented_fastapi_route_answers_like_the_fast_lane():
    runtime = FakeRuntime()
    for body in (SYLK_BODY, {**SYLK_BODY, "platform": "bb10"}, b"{"):
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        via_route = await raw_asgi(create_http_app(runtime, fast_lane=False), chunks=[payload])
        via_lane = await raw_asgi(create_http_app(runtime), chunks=[payload])
        assert via_route[:2] == via_lane[:2]
    assert len(runtime.dispatched) == 2


# -- validation messages through HTTP --------------------------------------------------------


@pytest.mark.parametrize(("change", "status", "description"), [
    ({"app-id": None}, 400, "Field 'app-id' required"),
    ({"call-id": None}, 400, "Field 'call-id' required"),
    ({"silent": None}, 400, "Field 'silent' required"),
    ({"media-type": None}, 400, "Field 'media-type' required"),
    ({"platform": "bb10"}, 404, "'bb10' platform is not configured"),
    ({"app-id": "com.nope"}, 404, "Apple com.nope app is not configured"),
    ({"platform": "android", "app-id": "org.linphone"}, 404,
     "Firebase org.linphone app is not configured"),
    ({"silent": "perhaps"}, 400, "Field 'silent' must be a boolean"),
    ({"token": 5}, 400, "Field 'token' must be a string"),
])
async def test_validation_errors(change, status, description):
    body = {k: v for k, v in {**SYLK_BODY, **change}.items() if v is not None}
    runtime = FakeRuntime()
    assert_sylk_shape(await post_push(runtime, body), status, description)
    assert runtime.dispatched == []


async def test_linphone_other_event_is_404():
    body = {"app-id": "org.linphone", "platform": "apple", "token": "t", "call-id": "c",
            "from": "sip:a@b", "event": "cancel"}
    body = assert_sylk_shape(await post_push(FakeRuntime(), body), 404)
    assert "cancel" in body["description"]


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"", "empty"), (b"   ", "empty"), (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"), (b"[1, 2]", "JSON object"), (b'"text"', "JSON object"),
    (b"null", "JSON object"), (b"[" * 5000, "not valid JSON"),
])
async def test_malformed_bodies_answer_400_in_sylk_shape(raw, fragment):
    body = assert_sylk_shape(await post_push(FakeRuntime(), raw), 400)
    assert fragment in body["description"]
    assert "Traceback" not in body["description"]


async def test_unknown_route_and_wrong_method():
    async with client_for(FakeRuntime()) as client:
        assert_sylk_shape(await client.get("/nowhere"), 404)
        response = await client.get("/push")
        assert_sylk_shape(response, 405)
        assert "POST" in response.headers["allow"]


async def test_health_and_docs():
    async with client_for(FakeRuntime()) as client:
        body = assert_sylk_shape(await client.get("/health"), 200)
        assert body["data"] == {"status": "ok"}
        head = await client.head("/health")
        assert head.status_code == 200 and head.content == b""
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
        assert "default-src 'self'" in docs.headers["content-security-policy"]
        redoc = await client.get("/redoc")
        assert "/docs-assets/redoc.standalone.js" in redoc.text and "fonts.googleapis" not in redoc.text
        asset = await client.get("/docs-assets/swagger-ui-bundle.js")
        assert asset.status_code == 200 and len(asset.content) > 100_000
        schema = (await client.get("/openapi.json")).json()
    push_schema = schema["paths"]["/push"]["post"]["requestBody"]["content"]["application/json"]
    assert "app-id" in push_schema["schema"]["properties"]
    assert "/v2/tokens/{account}/push" in schema["paths"]


# -- access list -----------------------------------------------------------------------------------


def nets(*texts):
    return tuple(ipaddress.ip_network(t) for t in texts)


@pytest.mark.parametrize(("client", "networks", "allowed"), [
    ("10.1.2.3", (), True),
    ("10.1.2.3", ("10.0.0.0/8",), True),
    ("11.1.2.3", ("10.0.0.0/8",), False),
    ("192.168.1.5", ("192.168.1.5/32", "10.0.0.0/8"), True),
    ("::ffff:10.1.2.3", ("10.0.0.0/8",), True),
    ("::ffff:11.1.2.3", ("10.0.0.0/8",), False),
    ("::ffff:10.1.2.3", ("::ffff:10.0.0.0/104",), True),
    ("2001:db8::1", ("2001:db8::/32",), True),
    ("2001:db9::1", ("2001:db8::/32",), False),
    ("::1", ("127.0.0.1/32",), False),
    (None, ("10.0.0.0/8",), False),
    ("not-an-ip", ("10.0.0.0/8",), False),
])
def test_is_allowed(client, networks, allowed):
    assert is_allowed(client, nets(*networks)) is allowed


async def test_access_list_refuses_with_sylk_403():
    runtime = FakeRuntime(make_settings(allowed_hosts=nets("10.0.0.0/8")))
    response = await post_push(runtime, SYLK_BODY, client_addr=("192.0.2.1", 1234))
    assert response.status_code == 403
    assert response.json() == {"code": 403, "description": "access denied by access list",
                               "data": {}}
    assert runtime.dispatched == []
    ok = await post_push(runtime, SYLK_BODY, client_addr=("::ffff:10.9.9.9", 1234))
    assert ok.status_code == 200


async def raw_asgi(app, *, method="POST", path="/push", headers=(), chunks=(b"",),
                   client=("127.0.0.1", 1)):
    """Drive the ASGI app by hand; returns (status, json body, receive calls)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": list(headers),
             "client": client, "server": ("127.0.0.1", 8400)}
    pending = list(chunks)
    calls = 0
    sent: list = []

    async def receive():
        nonlocal calls
        calls += 1
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body), calls


async def test_refusal_happens_before_the_body_is_read():
    runtime = FakeRuntime(make_settings(allowed_hosts=nets("10.0.0.0/8")))
    status, body, calls = await raw_asgi(create_http_app(runtime), client=("203.0.113.9", 1),
                                         chunks=[b"{}"])
    assert (status, body["code"], calls) == (403, 403, 0)


# -- body size -------------------------------------------------------------------------------------


async def test_declared_oversized_body_is_413_without_reading():
    runtime = FakeRuntime(make_settings(max_body_size=100))
    status, body, calls = await raw_asgi(create_http_app(runtime),
                                         headers=[(b"content-length", b"101")], chunks=[b"x"])
    assert (status, calls) == (413, 0)
    assert body["code"] == 413 and "100 bytes" in body["description"]


async def test_streamed_oversized_body_is_413():
    runtime = FakeRuntime(make_settings(max_body_size=100))
    status, body, calls = await raw_asgi(create_http_app(runtime), chunks=[b"{" + b" " * 60] * 3)
    assert status == 413 and body["code"] == 413 and calls == 2
    assert runtime.dispatched == []


async def test_body_at_the_limit_is_accepted():
    payload = json.dumps(SYLK_BODY).encode()
    runtime = FakeRuntime(make_settings(max_body_size=len(payload)))
    assert (await post_push(runtime, payload)).status_code == 200
    runtime.settings = make_settings(max_body_size=len(payload) - 1)
    assert_sylk_shape(await post_push(runtime, payload), 413)


async def test_chunked_body_is_reassembled():
    payload = json.dumps(SYLK_BODY).encode()
    runtime = FakeRuntime()
    status, body, _ = await raw_asgi(create_http_app(runtime),
                                     chunks=[payload[:10], payload[10:30], payload[30:]])
    assert status == 200 and body["data"]["call_id"] == "call-1"


# -- a real server ---------------------------------------------------------------------------------


async def test_through_a_real_hypercorn_trio_server():
    runtime = FakeRuntime(make_settings(allowed_hosts=nets("127.0.0.0/8")))
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(serve, create_http_app(runtime), config, shutdown_trigger=stop.wait)
        )
        url = binds[0]
        assert not url.endswith(":0")
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/push", json=SYLK_BODY)
            assert_sylk_shape(response, 200, "push notification response")
            assert_sylk_shape(await client.post("/push", content=b"{oops"), 400)
            runtime.settings = make_settings(allowed_hosts=nets("10.0.0.0/8"))
            assert_sylk_shape(await client.get("/health"), 403)
        stop.set()
    assert len(runtime.dispatched) == 1


@pytest.mark.parametrize("outcome", [
    Outcome(OutcomeKind.DELIVERED, 200, None, url="https://h/3/device/\u00e9t", attempts=1),
    Outcome(OutcomeKind.FAILED, 503, 'bad "x"\x00\n\u2028', url="", body={"reason": "B", "n": 1.5}),
    Outcome(OutcomeKind.FAILED, 0, "no answer", url=None, body={}),
    Outcome(OutcomeKind.TOKEN_DEAD, 410, "Unregistered", body={"timestamp": 1, "x": [None, True]}),
])
def test_push_answer_json_is_byte_identical_to_the_generic_encoding(outcome):
    from sidecar.ingress.answers import outcome_data, push_answer_json, sylk_json
    from sidecar.model import Event, Push

    push = Push(app_id="com.ag.sylk", platform="apple", token='tok\u00e9"\\', event=Event.INCOMING_SESSION,
                call_id="c\u00e9-1@x", from_uri="a@x", to_uri="b@x", deadline=1.0, expires_at=1.0)
    status = outcome.code if 100 <= outcome.code <= 599 else 502
    expected = sylk_json(status, "push notification response", outcome_data(push, outcome))
    assert push_answer_json(status, push, outcome) == expected
    assert json.loads(expected)["data"]["call_id"] == "c\u00e9-1@x"
