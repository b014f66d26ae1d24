"""The sample push-service plugin (config/pns/sample_pns.py), loaded as the sidecar loads it.

It pushes to a tiny HTTP/1.1 server (h11 over trio) on 127.0.0.1, port 0.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import h11
import pytest
import trio

from sidecar.config import AppConfig
from sidecar.model import Event, Push
from sidecar.pns.base import Notification, PushService, PushServiceConfigError, Verdict
from sidecar.pns.registry import PushServices, load_plugin_classes

PNS_DIR = Path(__file__).resolve().parents[2] / "config" / "pns"


class WebhookServer:
    """Answers each POST with the next scripted (status, headers) (default 200); keeps bodies."""

    def __init__(self):
        self.script: list[tuple[int, list[tuple[str, str]]]] = []
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request, body = None, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            headers = {k.decode(): v.decode() for k, v in request.headers}
            self.received.append((request.target.decode(), headers, body))
            status, extra = self.script.pop(0) if self.script else (200, [])
            answer = b'{"ok": true}' if status == 200 else b""
            response_headers = [("content-length", str(len(answer))), ("content-type", "application/json"), *extra]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=response_headers)))
            await stream.send_all(conn.send(h11.Data(data=answer)) + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


@pytest.fixture
async def webhook(nursery):
    server = WebhookServer()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


def app_config(**extra) -> AppConfig:
    return AppConfig(section="hooked", app_id="com.example.hooked", app_type="sample", platform="webhook",
                     extra=extra)


def make_push(token: str = "device-1") -> Push:
    return Push(app_id="com.example.hooked", platform="webhook", token=token, event=Event.INCOMING_SESSION,
                call_id="call-9", from_uri="alice@example.com", to_uri="bob@example.com",
                deadline=1e9, expires_at=2e9)


def test_sample_plugin_is_found_by_its_platform_name():
    classes = load_plugin_classes(PNS_DIR)
    assert set(classes) == {"webhook"}
    assert issubclass(classes["webhook"], PushService)


async def test_sample_plugin_delivers_the_payload(webhook, nursery):
    cls = load_plugin_classes(PNS_DIR)["webhook"]
    service = cls(app_config(webhook_url=f"http://127.0.0.1:{webhook.port}/notify"), nursery)
    note = Notification({"x-priority": "high"}, {"event": "incoming_session", "call-id": "call-9"})
    result = await service.send(make_push(), note)
    await service.aclose()
    assert result.verdict is Verdict.DELIVERED and result.status == 200
    assert result.url == f"http://127.0.0.1:{webhook.port}/notify" and result.body == {"ok": True}
    target, headers, body = webhook.received[0]
    assert target == "/notify" and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "app_id": "com.example.hooked", "token": "device-1", "event": "incoming_session", "call_id": "call-9",
        "headers": {"x-priority": "high"}, "payload": {"event": "incoming_session", "call-id": "call-9"},
    }


async def test_sample_plugin_through_the_registry_maps_answers(webhook, nursery):
    plugins = load_plugin_classes(PNS_DIR)
    services = PushServices(nursery, dict(plugins))  # plugins are factories: cls(app, nursery)
    app = app_config(webhook_url=f"http://127.0.0.1:{webhook.port}/notify", webhook_timeout="2")
    service = services.service_for(app)
    webhook.script = [(202, []), (410, []), (404, []), (429, [("retry-after", "7")]), (503, []), (400, [])]
    results = [await service.send(make_push(), Notification({}, {"n": i})) for i in range(6)]
    await services.aclose()
    assert [(r.verdict, r.status) for r in results] == [
        (Verdict.DELIVERED, 202), (Verdict.TOKEN_DEAD, 410), (Verdict.TOKEN_DEAD, 404),
        (Verdict.RETRY, 429), (Verdict.RETRY, 503), (Verdict.REJECTED, 400),
    ]
    assert results[3].retry_after == 7.0
    assert [json.loads(b)["payload"] for _, _, b in webhook.received] == [{"n": i} for i in range(6)]


async def test_sample_plugin_unreachable_is_retry(nursery):
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    cls = load_plugin_classes(PNS_DIR)["webhook"]
    service = cls(app_config(webhook_url=f"http://127.0.0.1:{port}/"), nursery)
    result = await service.send(make_push(), Notification({}, {}))
    await service.aclose()
    assert result.verdict is Verdict.RETRY and result.status == 0 and "ConnectError" in result.reason


@pytest.mark.parametrize(
    "extra, message",
    [
        ({}, r"\[hooked\] webhook_url: required"),
        ({"webhook_url": "ftp://x/"}, "webhook_url: required, an http"),
        ({"webhook_url": "http://x/", "webhook_timeout": "soon"}, "webhook_timeout: 'soon'"),
    ],
)
async def test_sample_plugin_checks_its_options(nursery, extra, message):
    cls = load_plugin_classes(PNS_DIR)["webhook"]
    with pytest.raises(PushServiceConfigError, match=message):
        cls(app_config(**extra), nursery)
