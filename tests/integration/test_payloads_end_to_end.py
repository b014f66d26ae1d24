"""Every app type x event x platform, through the real sidecar to the simulator.

One ``POST /push`` per case; what the simulator recorded (headers and body
of the APNs or FCM request) is checked against the Sylk compatibility
contract (shared/reference/sylk-compat.md), including the FIXes: an absolute
``apns-expiration``, FCM data values that are all strings with nulls
dropped, and an FCM ttl no longer than the push's remaining life.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from sidecar.model import DEFAULT_TTL, Event, session_id
from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import TOKEN, running_sidecar, sidecar_config

EVENTS = ("incoming_session", "incoming_conference_request", "cancel", "message", "transfer")
CALL_EVENTS = ("incoming_session", "incoming_conference_request")
FROM, TO = "sip:alice@example.com", "sip:bob@example.com"
SEND_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\Z")

#: Per event, the request fields beyond the common ones: nulls on purpose
#: (display name on the conference, content-type on the message) to check
#: the fallbacks and that FCM drops them.
EVENT_FIELDS: dict[str, dict] = {
    "incoming_session": {"media-type": "audio", "from-display-name": "Alice"},
    "incoming_conference_request": {"media-type": "video", "from-display-name": None,
                                    "account": "room@conference.example.com"},
    "cancel": {"reason": "caller hung up"},
    "message": {"media-type": "sms", "from-display-name": "Alice", "content": "hello there",
                "content-type": None, "badge": 3},
    "transfer": {"media-type": "video", "from-display-name": "Alice", "filename": "clip.mp4",
                 "filetype": "video/mp4", "badge": 2},
}


def with_linphone_on_firebase(config_dir: Path, creds: SimCredentials, sim_port: int) -> None:
    """Add the fourth combination to the simulator's config: linphone on Firebase."""
    applications = config_dir / "applications.ini"
    applications.write_text(applications.read_text() + f"""
[linphone-firebase]
app_id = {creds.cert_bundle_id}.prod
app_type = linphone
app_platform = firebase
firebase_push_url = https://127.0.0.1:{sim_port}/v1/projects/{creds.project_id}/messages:send
firebase_authorization_file = {creds.service_account_file}
tls_ca_file = {creds.ca_file}
""")


@pytest.fixture
async def http(tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials) -> AsyncIterator[httpx.AsyncClient]:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    with_linphone_on_firebase(config_dir, sim_credentials, sim.port)
    async with running_sidecar(config_dir) as handle:
        assert len(handle.runtime.settings.applications) == 4
        async with httpx.AsyncClient(base_url=handle.http_url, timeout=30) as client:
            yield client


def app_id(creds: SimCredentials, app_type: str) -> str:
    return f"{creds.token_bundle_id if app_type == 'sylk' else creds.cert_bundle_id}.prod"


def request_body(creds: SimCredentials, app_type: str, platform: str, event: str, **extra) -> dict:
    body = {"app-id": app_id(creds, app_type), "platform": platform, "token": TOKEN,
            "call-id": f"{event}-{platform}@example.com", "from": FROM, "to": TO,
            "event": event, "silent": True, **EVENT_FIELDS[event]}
    body.update(extra)
    return body


async def push(http: httpx.AsyncClient, sim: Simulator, body: dict) -> tuple[dict, float, float]:
    """POST /push; return the one record the simulator made and the wall-clock window."""
    before = time.time()
    answer = await http.post("/push", json=body)
    after = time.time()
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["description"] == "push notification response"
    assert reply["data"]["code"] == 200 and reply["data"]["call_id"] == body["call-id"]
    [record] = [r for r in sim.requests if r["kind"] in ("apns", "fcm")]
    assert record["status"] == 200
    return record, before, after


def assert_apns_headers(record: dict, *, topic: str, push_type: str, priority: int,
                        ttl: float, before: float, after: float) -> None:
    headers = record["headers"]
    assert record["path"] == f"/3/device/{TOKEN}"
    assert headers["apns-topic"] == topic
    assert headers["apns-push-type"] == push_type
    assert headers["apns-priority"] == str(priority)
    # FIX: an absolute UNIX time (now + the push's life), not Sylk's constant 120.
    assert int(before + ttl) - 1 <= int(headers["apns-expiration"]) <= after + ttl


def assert_fcm_message(record: dict, sim_credentials: SimCredentials, event: str,
                       before: float) -> dict:
    """The common FCM rules; returns ``message`` for the per-event checks."""
    assert record["path"] == f"/v1/projects/{sim_credentials.project_id}/messages:send"
    assert record["headers"]["authorization"].lower().startswith("bearer ")
    message = record["body"]["message"]
    assert message["token"] == TOKEN
    data = message["data"]
    # FIX: FCM refuses non-string data values; nulls are dropped, not sent as "null".
    assert all(isinstance(value, str) for value in data.values()), data
    assert "None" not in data.values() and "null" not in data.values()
    android = message["android"]
    assert android["priority"] == "high"
    ttl = int(re.fullmatch(r"(\d+)s", android["ttl"]).group(1))
    life = DEFAULT_TTL[Event(event)]
    # Never longer than what is left of the push's life when it was built.
    assert life - (time.time() - before) - 2 <= ttl <= life
    if event in CALL_EVENTS or event == "cancel":
        assert ttl <= 60
    return message


# ---- sylk on Apple ---------------------------------------------------------------------


@pytest.mark.parametrize("event", EVENTS)
async def test_sylk_on_apple(http: httpx.AsyncClient, sim: Simulator, sim_credentials, event: str) -> None:
    body = request_body(sim_credentials, "sylk", "apple", event)
    record, before, after = await push(http, sim, body)
    base = sim_credentials.token_bundle_id
    ttl = DEFAULT_TTL[Event(event)]
    payload = record["body"]
    call_id = body["call-id"]
    assert record["jwt"]["header"] == {"alg": "ES256", "kid": sim_credentials.key_id}
    if event in CALL_EVENTS:
        assert_apns_headers(record, topic=f"{base}.voip", push_type="voip", priority=10,
                            ttl=ttl, before=before, after=after)
        expected = {"event": event, "call-id": call_id, "session-id": session_id(call_id),
                    "media-type": body["media-type"], "from_uri": FROM,
                    "from_display_name": body["from-display-name"], "to_uri": TO}
        if event == "incoming_conference_request":
            expected["account"] = body["account"]
        assert payload == expected
    elif event == "cancel":
        assert_apns_headers(record, topic=base, push_type="background", priority=5,
                            ttl=ttl, before=before, after=after)
        assert payload == {"event": "cancel", "call-id": call_id,
                           "session-id": session_id(call_id), "reason": "caller hung up"}
    elif event == "message":
        assert_apns_headers(record, topic=base, push_type="alert", priority=5,
                            ttl=ttl, before=before, after=after)
        assert payload["aps"] == {
            "alert": {"title": "Alice", "body": f"From {FROM}"}, "message_id": call_id,
            "sound": "default", "content-available": 1, "mutable-content": 1, "badge": 3,
        }
        assert payload["data"] == {
            "event": "message", "message_id": call_id, "from_uri": FROM,
            "from_display_name": "Alice", "to_uri": TO, "content": "hello there",
            "content_type": None,
        }
    else:
        assert_apns_headers(record, topic=base, push_type="alert", priority=5,
                            ttl=ttl, before=before, after=after)
        assert payload["aps"] == {
            "alert": {"title": "New video message", "body": f"From {FROM}"},
            "sound": "default", "mutable-content": 1, "badge": 2,
        }
        assert payload["data"] == {
            "event": "transfer", "from_uri": FROM, "from_display_name": "Alice", "to_uri": TO,
            "file-id": call_id, "media-type": "video",
            "metadata": {"filename": "clip.mp4", "filetype": "video/mp4"},
        }


async def test_sylk_message_without_display_name_gets_the_default_title(
    http: httpx.AsyncClient, sim: Simulator, sim_credentials
) -> None:
    body = request_body(sim_credentials, "sylk", "apple", "message", **{"from-display-name": None})
    record, _, _ = await push(http, sim, body)
    assert record["body"]["aps"]["alert"]["title"] == "New message"


# ---- sylk on Firebase ------------------------------------------------------------------


@pytest.mark.parametrize("event", EVENTS)
async def test_sylk_on_firebase(http: httpx.AsyncClient, sim: Simulator, sim_credentials, event: str) -> None:
    body = request_body(sim_credentials, "sylk", "firebase", event)
    record, before, _ = await push(http, sim, body)
    message = assert_fcm_message(record, sim_credentials, event, before)
    data = message["data"]
    call_id = body["call-id"]
    extra_keys = set(message) - {"token", "data", "android"}
    if event in CALL_EVENTS:
        expected = {"event": event, "call-id": call_id, "session-id": session_id(call_id),
                    "media-type": body["media-type"], "from_uri": FROM,
                    # the display name falls back to the caller's URI
                    "from_display_name": body["from-display-name"] or FROM, "to_uri": TO}
        if event == "incoming_conference_request":
            expected["account"] = body["account"]
        assert data == expected
        assert extra_keys == set()
    elif event == "cancel":
        assert data == {"event": "cancel", "call-id": call_id,
                        "session-id": session_id(call_id), "reason": "caller hung up"}
        assert extra_keys == set()
    elif event == "message":
        assert data == {"event": "message", "message_id": call_id, "from_uri": FROM,
                        "from_display_name": "Alice", "to_uri": TO, "content": "hello there"}
        assert message["apns"] == {"headers": {"apns-priority": "5"}}
        assert extra_keys == {"apns"}
    else:
        metadata = data.pop("metadata")
        assert json.loads(metadata) == {"filename": "clip.mp4", "filetype": "video/mp4"}
        assert data == {"event": "transfer", "from_uri": FROM, "from_display_name": "Alice",
                        "to_uri": TO, "file-id": call_id, "media-type": "video"}
        assert message["notification"] == {"title": "New video message", "body": f"From {FROM}"}
        assert message["android"]["notification"] == {
            "channel_id": "sylk-messages-sound", "sound": "default", "default_sound": True,
            "notification_priority": "PRIORITY_HIGH",
        }
        assert extra_keys == {"notification"}


# ---- linphone --------------------------------------------------------------------------


@pytest.mark.parametrize("silent", [True, False])
async def test_linphone_incoming_session_on_apple(
    http: httpx.AsyncClient, sim: Simulator, sim_credentials, silent: bool
) -> None:
    body = request_body(sim_credentials, "linphone", "apple", "incoming_session", silent=silent)
    record, before, after = await push(http, sim, body)
    assert "authorization" not in record["headers"]  # certificate auth
    assert record["client_certificate_topic"] == sim_credentials.cert_bundle_id
    assert_apns_headers(record, topic=f"{sim_credentials.cert_bundle_id}.voip", push_type="voip",
                        priority=10, ttl=DEFAULT_TTL[Event.INCOMING_SESSION],
                        before=before, after=after)
    payload = record["body"]
    if silent:
        sent_at = payload["aps"].pop("send-time")
        assert payload == {"aps": {"sound": "", "loc-key": "IC_SIL", "call-id": body["call-id"]},
                           "from-uri": FROM, "pn_ttl": 2592000}
    else:
        sent_at = payload.pop("send-time")
        assert payload == {"aps": {"alert": {"loc-key": "IC_MSG", "loc-args": [FROM]},
                                   "sound": "msg.caf", "badge": 1},
                           "pn_ttl": 2592000, "call-id": body["call-id"]}
    assert SEND_TIME.match(sent_at)


async def test_linphone_incoming_session_on_firebase(http: httpx.AsyncClient, sim: Simulator, sim_credentials) -> None:
    body = request_body(sim_credentials, "linphone", "firebase", "incoming_session")
    record, before, _ = await push(http, sim, body)
    message = assert_fcm_message(record, sim_credentials, "incoming_session", before)
    data = dict(message["data"])
    assert SEND_TIME.match(data.pop("send-time"))
    assert data == {"call-id": body["call-id"], "sip-from": FROM, "loc-key": "", "loc-args": FROM}
    assert set(message) == {"token", "data", "android"}


@pytest.mark.parametrize("platform", ["apple", "firebase"])
async def test_linphone_defaults_a_missing_event_to_incoming_session(
    http: httpx.AsyncClient, sim: Simulator, sim_credentials, platform: str
) -> None:
    body = request_body(sim_credentials, "linphone", platform, "incoming_session")
    del body["event"]
    record, _, _ = await push(http, sim, body)
    call_id = record["body"]["message"]["data"]["call-id"] if platform == "firebase" \
        else record["body"]["aps"]["call-id"]
    assert call_id == body["call-id"]


@pytest.mark.parametrize("platform", ["apple", "firebase"])
@pytest.mark.parametrize("event", [e for e in EVENTS if e != "incoming_session"])
async def test_linphone_refuses_other_events_with_404(
    http: httpx.AsyncClient, sim: Simulator, sim_credentials, event: str, platform: str
) -> None:
    answer = await http.post("/push", json=request_body(sim_credentials, "linphone", platform, event))
    assert answer.status_code == 404, answer.text
    reply = answer.json()
    assert reply["code"] == 404 and event in reply["description"]
    await trio.sleep(0.05)
    assert [r for r in sim.requests if r["kind"] in ("apns", "fcm")] == []
