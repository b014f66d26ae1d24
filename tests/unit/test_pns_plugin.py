"""The sample push-service plugin (config/pns/sample_pns.py), loaded as the sidecar loads it.

It pushes to a tiny HTTP/1.1 server (h11 over trio) on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from sidecar.config import AppConfig
from sidecar.model import Event, Push
from sidecar.pns.base import Notification, PushService, PushServiceConfigError, Verdict
from sidecar.pns.registry import PushServices, load_plugin_classes

PNS_DIR = Path(__file__).resolve().parents[2] / "config" / "pns"


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
    assert result.url == f"http://127.0.0.1:{webhook.port}/notify" and result.body == {"ok": True, "n": 1}
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
    assert services.apply({app.key: app}) == []
    webhook.script = [(202, []), (410, []), (404, []), (429, [("retry-after", "7")]), (503, []), (400, [])]
    results = [await services.send(app.key, make_push(), Notification({}, {"n": i})) for i in range(6)]
    assert all(result is not None for result in results)
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
