"""Plugins through the whole sidecar: a custom push service and custom app types.

- ``app_platform = webhook`` (config/pns/sample_pns.py, copied into
  ``extra_pns_dir``) with an app type from ``extra_applications_dir`` that
  has a ``build_webhook``: ``POST /push`` ends as a POST to a local HTTP
  server (h11 over trio on 127.0.0.1, port 0).
- ``app_type = sample`` (config/applications/sample_app.py) on Apple: the
  plugin's payload reaches the APNs simulator.
- A plugin file that fails to import: ``pushsidecar check-config`` exits 2
  and names the file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import TOKEN, running_sidecar, sidecar_config
from webhook_server import WebhookServer

REPO = Path(__file__).resolve().parents[2]
SAMPLE_PNS = REPO / "config" / "pns" / "sample_pns.py"
SAMPLE_APP = REPO / "config" / "applications" / "sample_app.py"
HOOK_APP_ID = "com.example.hooked"
SAMPLE_APPLE_ID = "com.example.sample.prod"

#: A test-local app type with a payload for the webhook platform.
WEBHOOK_APP_TYPE = '''
from sidecar.apps.base import AppType
from sidecar.model import Push
from sidecar.pns.base import Notification


class WebhookCalls(AppType):
    name = "webhook_calls"

    def build_webhook(self, push: Push, now: float) -> Notification:
        return Notification(
            {"x-expires-at": str(int(push.expires_at))},
            {"event": push.event.value, "call-id": push.call_id, "from": push.from_uri,
             "display-name": push.from_display_name, "media": push.media_type},
        )
'''


def plugin_config(tmp_path: Path, creds: SimCredentials, sim_port: int, webhook_port: int) -> Path:
    """The simulator's config plus plugin folders and two plugin applications."""
    config_dir = sidecar_config(tmp_path, creds, sim_port)
    pns_dir, apps_dir = tmp_path / "pns-plugins", tmp_path / "app-plugins"
    pns_dir.mkdir()
    apps_dir.mkdir()
    shutil.copy(SAMPLE_PNS, pns_dir / "sample_pns.py")
    shutil.copy(SAMPLE_APP, apps_dir / "sample_app.py")
    (apps_dir / "webhook_calls.py").write_text(WEBHOOK_APP_TYPE)
    general = config_dir / "general.ini"
    general.write_text(general.read_text().replace(
        "[applications]\n",
        f"[applications]\nextra_pns_dir = {pns_dir}\nextra_applications_dir = {apps_dir}\n",
    ))
    applications = config_dir / "applications.ini"
    applications.write_text(applications.read_text() + f"""
[hooked]
app_id = {HOOK_APP_ID}
app_type = webhook_calls
app_platform = webhook
webhook_url = http://127.0.0.1:{webhook_port}/notify
webhook_timeout = 5

[sample-apple]
app_id = {SAMPLE_APPLE_ID}
app_type = sample
app_platform = apple
apple_push_url = 127.0.0.1:{sim_port}
apple_key = {creds.apns_key_file}
key_id = {creds.key_id}
team_id = {creds.team_id}
tls_ca_file = {creds.ca_file}
""")
    return config_dir


@pytest.fixture
async def http(tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials,
               webhook: WebhookServer) -> AsyncIterator[httpx.AsyncClient]:
    config_dir = plugin_config(tmp_path, sim_credentials, sim.port, webhook.port)
    async with running_sidecar(config_dir) as handle:
        # The plugin platform's application has its service in force, next to the built-in ones.
        in_force = set(handle.runtime.services.statistics())
        assert {(HOOK_APP_ID, "webhook"), (SAMPLE_APPLE_ID, "apple")} <= in_force
        async with httpx.AsyncClient(base_url=handle.http_url, timeout=30) as client:
            yield client


def call(**overrides) -> dict:
    body = {"app-id": HOOK_APP_ID, "platform": "webhook", "token": "device-token-1",
            "call-id": "hook-call-1", "from": "sip:alice@example.com", "to": "sip:bob@example.com",
            "event": "incoming_session", "media-type": "audio", "from-display-name": "Alice"}
    body.update(overrides)
    return body


async def test_custom_push_service_end_to_end(http: httpx.AsyncClient, webhook: WebhookServer,
                                              sim: Simulator) -> None:
    before = time.time()
    answer = await http.post("/push", json=call())
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["code"] == 200 and data["platform"] == "webhook"
    assert data["url"] == f"http://127.0.0.1:{webhook.port}/notify"
    assert data["body"] == {"ok": True, "n": 1}  # the webhook's own answer, passed back
    [(target, headers, raw)] = webhook.received
    assert target == "/notify" and headers["content-type"] == "application/json"
    envelope = json.loads(raw)
    assert envelope["app_id"] == HOOK_APP_ID and envelope["token"] == "device-token-1"
    assert envelope["event"] == "incoming_session" and envelope["call_id"] == "hook-call-1"
    # The payload is exactly what the plugin app type built.
    assert envelope["payload"] == {"event": "incoming_session", "call-id": "hook-call-1",
                                   "from": "sip:alice@example.com", "display-name": "Alice",
                                   "media": "audio"}
    assert before + 40 <= int(envelope["headers"]["x-expires-at"]) <= time.time() + 46
    assert [r for r in sim.requests if r["kind"] in ("apns", "fcm")] == []  # nothing leaked there


async def test_custom_push_service_retries_then_delivers(http: httpx.AsyncClient,
                                                         webhook: WebhookServer) -> None:
    webhook.script = [(503, [("retry-after", "0")])]
    answer = await http.post("/push", json=call(**{"call-id": "hook-retry"}))
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["body"] == {"ok": True, "n": 2}
    assert [json.loads(body)["call_id"] for _, _, body in webhook.received] == ["hook-retry"] * 2


async def test_custom_push_service_dead_token(http: httpx.AsyncClient, webhook: WebhookServer) -> None:
    webhook.script = [(410, [])]
    answer = await http.post("/push", json=call(**{"call-id": "hook-dead"}))
    assert answer.status_code == 410, answer.text
    assert len(webhook.received) == 1  # a dead token is not retried


async def test_app_type_without_a_payload_for_the_platform_is_refused(
    http: httpx.AsyncClient, webhook: WebhookServer
) -> None:
    # The sample app type has build_apple and build_firebase, no build_webhook.
    config_app = call(**{"app-id": SAMPLE_APPLE_ID, "platform": "webhook"})
    answer = await http.post("/push", json=config_app)
    assert answer.status_code == 404, answer.text
    assert webhook.received == []


async def test_custom_app_type_on_apple_end_to_end(http: httpx.AsyncClient, sim: Simulator,
                                                   sim_credentials: SimCredentials) -> None:
    body = call(**{"app-id": SAMPLE_APPLE_ID, "platform": "apple", "token": TOKEN,
                   "call-id": "sample-call-1"})
    answer = await http.post("/push", json=body)
    assert answer.status_code == 200, answer.text
    [record] = [r for r in sim.requests if r["kind"] == "apns"]
    assert record["status"] == 200 and record["path"] == f"/3/device/{TOKEN}"
    headers = record["headers"]
    assert headers["apns-topic"] == "com.example.sample"
    assert headers["apns-push-type"] == "alert" and headers["apns-priority"] == "10"
    assert int(headers["apns-expiration"]) > time.time()
    assert record["jwt"]["claims"]["iss"] == sim_credentials.team_id
    assert record["body"] == {"aps": {"alert": {"title": "Alice", "body": "sip:alice@example.com"},
                                      "sound": "default"},
                              "call-id": "sample-call-1"}
    # The plugin's own request rule (a caller is required) is applied too.
    refused = await http.post("/push", json=dict(body, **{"from": ""}))
    assert refused.status_code == 400, refused.text


# ---- broken plugins: check-config exits 2 naming the file --------------------------------


def check_config(config_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config-dir", str(config_dir)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("folder", ["pns-plugins", "app-plugins"])
async def test_plugin_that_fails_to_import_fails_check_config(
    tmp_path: Path, sim_credentials: SimCredentials, folder: str
) -> None:
    config_dir = plugin_config(tmp_path, sim_credentials, sim_port=9, webhook_port=9)
    ok = await trio.to_thread.run_sync(check_config, config_dir)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / folder / "broken_plugin.py"
    broken.write_text(textwrap.dedent("""
        import sidecar
        raise RuntimeError("this plugin cannot start")
    """))
    result = await trio.to_thread.run_sync(check_config, config_dir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(broken) in result.stderr
    assert "this plugin cannot start" in result.stderr
    assert "Traceback" not in result.stderr
