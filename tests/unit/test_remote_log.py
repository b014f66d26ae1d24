"""Remote logging against a real HTTP server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import functools
import json
import logging

import trio

from sidecar.config import AppConfig
from sidecar.model import Event, Outcome, OutcomeKind, Push
from sidecar.observe.log import register_secret
from sidecar.observe.metrics import Metrics
from sidecar.observe.remote import RemoteLogger, display_url
from sidecar.pns.base import Notification

JWT = ("eyJhbGciOiJFUzI1NiIsImtpZCI6IktFWUlEIn0.eyJpc3MiOiJURUFNIiwiaWF0IjoxNzAwMDAwMDAwfQ"
       ".MEUCIQDx-signature_part")


class RecordingServer:
    """A tiny HTTP/1.1 server: records each request, answers ``answer`` (or never)."""

    def __init__(self, answer: dict | None = None, *, hang: bool = False):
        self.answer = answer if answer is not None else {"id": "log-42"}
        self.hang = hang
        self.requests: list[dict] = []
        self.received = trio.Event()
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, val = line.partition(":")
            headers[name.strip().lower()] = val.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += await stream.receive_some()
        method, path, _ = lines[0].split(" ", 2)
        self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
        self.received.set()
        if self.hang:
            await trio.sleep_forever()
        payload = json.dumps(self.answer).encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode() + payload
        )

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return f"http://127.0.0.1:{self.port}/log"


def make_app(urls, **changes) -> AppConfig:
    return AppConfig(section="app", app_id="com.example.app", app_type="sylk", platform="apple",
                     log_remote_urls=tuple(urls), **changes)


def make_push() -> Push:
    return Push(app_id="com.example.app", platform="apple", token="0123abcd" * 8,
                event=Event.INCOMING_SESSION, call_id="call-9@x", from_uri="alice@x", to_uri="bob@x",
                deadline=0.0, expires_at=0.0, media_type="audio", device_id="dev-1", request_id="r-9")


NOTIFICATION = Notification(
    headers={"apns-topic": "com.example.app.voip", "authorization": f"bearer {JWT}",
             "Authorization": "bearer other", "apns-push-type": "voip"},
    payload={"event": "incoming_session", "call-id": "call-9@x", "debug": f"token {JWT}",
             "secret": "my-registered-secret-value"},
)
OUTCOME = Outcome(OutcomeKind.DELIVERED, 200, "Success", url="https://api.push.apple.com/3/device/0123",
                  attempts=1)


async def test_posts_sylk_shaped_document_without_secrets(caplog):
    caplog.set_level(logging.INFO, logger="sidecar.remote")
    register_secret("my-registered-secret-value")
    server, metrics = RecordingServer({"id": "log-42", "other": 1}), Metrics()
    remote = RemoteLogger(metrics=metrics)
    async with trio.open_nursery() as nursery:
        url = await server.start(nursery)
        await nursery.start(remote.run)
        app = make_app([url, url.replace("/log", "/log2")], log_remote_key="id")
        remote(make_push(), app, NOTIFICATION, OUTCOME)  # the dispatcher's listener signature
        with trio.fail_after(5):
            while remote.sent < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

    assert sorted(r["path"] for r in server.requests) == ["/log", "/log2"]
    request = server.requests[0]
    assert request["method"] == "POST" and request["headers"]["content-type"] == "application/json"
    assert "authorization" not in request["headers"]
    raw = request["body"].decode()
    assert JWT not in raw and "bearer" not in raw.lower() and "my-registered-secret-value" not in raw
    document = json.loads(raw)
    assert document["response"] == {"code": 200, "description": "Success",
                                    "push_url": "https://api.push.apple.com/3/device/0123"}
    assert document["request"]["headers"] == {"apns-topic": "com.example.app.voip", "apns-push-type": "voip"}
    assert document["request"]["payload"]["call-id"] == "call-9@x"
    assert document["request"]["payload"]["debug"] == "token [REDACTED]"
    body = document["request"]["body"]
    assert body["app-id"] == "com.example.app" and body["call-id"] == "call-9@x"
    assert body["media-type"] == "audio" and body["silent"] is True and "reason" not in body
    assert document["call_id"] == "call-9@x" and document["outcome"] == "delivered"
    # log_remote_key: the value of that key in the remote's answer is logged
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.remote"]
    assert any('id="log-42"' in line and "/log2" in line for line in lines), lines
    assert metrics.render()[0].count(b'pushsidecar_remote_logs_total{result="sent"} 2.0') == 1
    assert b'pushsidecar_queue_depth{queue="remote_log"} 0.0' in metrics.render()[0]  # taken by the worker


async def test_queue_full_drops_and_counts_without_waiting():
    metrics = Metrics()
    remote = RemoteLogger(metrics=metrics, capacity=2)  # worker not running: nothing drains
    app = make_app(["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"])
    with trio.CancelScope() as scope:
        scope.cancel()  # any checkpoint inside would raise Cancelled: submit never waits
        results = [remote.submit(app, make_push(), NOTIFICATION, OUTCOME) for _ in range(5)]
    assert not scope.cancelled_caught
    assert results == [True, True, False, False, False]
    assert remote.dropped == 6  # 3 entries x 2 URLs
    assert b'pushsidecar_remote_logs_total{result="dropped"} 6.0' in metrics.render()[0]
    assert remote.statistics()["queued"] == 2
    assert b'pushsidecar_queue_depth{queue="remote_log"} 2.0' in metrics.render()[0]


async def test_apps_without_urls_cost_nothing():
    remote = RemoteLogger(capacity=1)
    for _ in range(3):
        assert remote.submit(make_app([]), make_push(), None, OUTCOME)
        assert remote.submit(None, make_push(), None, OUTCOME)
    assert remote.statistics()["queued"] == 0 and remote.dropped == 0


async def test_timeout_counts_a_failure_and_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger="sidecar.remote")
    server = RecordingServer(hang=True)
    remote = RemoteLogger()
    async with trio.open_nursery() as nursery:
        url = await server.start(nursery)
        await nursery.start(remote.run)
        app = make_app([url.replace("127.0.0.1", "user:pw@127.0.0.1")], log_remote_timeout=0.2)
        remote.submit(app, make_push(), None, OUTCOME)
        remote.submit(app, make_push(), None, OUTCOME)
        with trio.fail_after(5):
            while remote.failed < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert remote.sent == 0 and len(server.requests) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "sidecar.remote"]
    assert len(warnings) == 1, warnings  # the second failure is counted, not logged
    assert "no answer within 0.2s" in warnings[0] and "pw" not in warnings[0]


async def test_a_malformed_url_fails_that_post_only():
    server, remote = RecordingServer(), RemoteLogger()
    async with trio.open_nursery() as nursery:
        url = await server.start(nursery)
        await nursery.start(remote.run)
        remote.submit(make_app(["http://[not a url", url]), make_push(), None, OUTCOME)
        with trio.fail_after(5):
            while remote.sent + remote.failed < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert (remote.sent, remote.failed) == (1, 1)


def test_display_url_hides_credentials():
    assert display_url("https://u:p@h/x") == "https://***@h/x"
    assert display_url("https://h/x") == "https://h/x"
