"""The sylk app type: headers and payloads for every event on Apple and Firebase."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sidecar.apps.sylk import SylkAppType, fcm_data, fcm_ttl, topic_base, voip_topic
from sidecar.model import Event, Push, PushRequest, PushValidationError, session_id

NOW = 1_700_000_000.0
SYLK = SylkAppType()


def make_push(event=Event.INCOMING_SESSION, **changes) -> Push:
    values = dict(
        app_id="com.agprojects.sylk.prod", platform="apple", token="tok", event=event,
        call_id="call-42", from_uri="sip:alice@example.com", to_uri="sip:bob@example.com",
        deadline=45.0, expires_at=NOW + 45, media_type="audio", from_display_name="Alice",
    )
    values.update(changes)
    return Push(**values)


def test_topic_helpers():
    assert topic_base("com.x.dev") == "com.x"
    assert topic_base("com.x.prod") == "com.x"
    assert topic_base("com.x.production") == "com.x.production"
    assert topic_base("com.dev.x") == "com.dev.x"
    assert voip_topic("com.x.prod") == "com.x.voip"
    assert voip_topic("com.x.voip.dev") == "com.x.voip"


def test_session_id_is_md5_as_uuid():
    sid = session_id("call-42")
    assert [len(part) for part in sid.split("-")] == [8, 4, 4, 4, 12]
    import hashlib
    assert sid.replace("-", "") == hashlib.md5(b"call-42").hexdigest()


def test_check_request_requires_silent_to_event():
    base = PushRequest(silent=True, to_uri="sip:b@c", event="cancel")
    assert SYLK.check_request(base) == base
    for name, key in [("silent", "silent"), ("to_uri", "to"), ("event", "event")]:
        with pytest.raises(PushValidationError, match=f"Field '{key}' required"):
            SYLK.check_request(dataclasses.replace(base, **{name: None}))


# -- Apple ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [Event.INCOMING_SESSION, Event.INCOMING_CONFERENCE_REQUEST])
def test_apple_call(event):
    push = make_push(event, account="room@conf.example.com")
    note = SYLK.build(push, "apple", NOW)
    assert note.headers == {
        "apns-topic": "com.agprojects.sylk.voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-expiration": str(int(NOW + 45)),
    }
    expected = {
        "event": event.value, "call-id": "call-42", "session-id": session_id("call-42"),
        "media-type": "audio", "from_uri": "sip:alice@example.com",
        "from_display_name": "Alice", "to_uri": "sip:bob@example.com",
    }
    if event is Event.INCOMING_CONFERENCE_REQUEST:
        expected["account"] = "room@conf.example.com"
    assert dict(note.payload) == expected


def test_apple_expiration_is_absolute_not_120():
    note = SYLK.build_apple(make_push(expires_at=1_800_000_123.9), NOW)
    assert note.headers["apns-expiration"] == "1800000123"


def test_apple_cancel_is_background_not_voip():
    note = SYLK.build_apple(make_push(Event.CANCEL, reason="answered", media_type=None), NOW)
    assert note.headers["apns-push-type"] == "background"
    assert note.headers["apns-topic"] == "com.agprojects.sylk"
    assert note.headers["apns-priority"] == "5"
    assert dict(note.payload) == {"event": "cancel", "call-id": "call-42",
                                  "session-id": session_id("call-42"), "reason": "answered"}


def test_apple_message():
    push = make_push(Event.MESSAGE, media_type="sms", content="hello", content_type="text/plain",
                     badge=3, from_display_name=None)
    note = SYLK.build_apple(push, NOW)
    assert note.headers["apns-push-type"] == "alert"
    assert note.headers["apns-topic"] == "com.agprojects.sylk"
    assert note.headers["apns-priority"] == "5"
    assert note.payload["aps"] == {
        "alert": {"title": "New message", "body": "From sip:alice@example.com"},
        "message_id": "call-42", "sound": "default", "content-available": 1,
        "mutable-content": 1, "badge": 3,
    }
    assert note.payload["data"] == {
        "event": "message", "message_id": "call-42", "from_uri": "sip:alice@example.com",
        "from_display_name": None, "to_uri": "sip:bob@example.com", "content": "hello",
        "content_type": "text/plain",
    }
    titled = SYLK.build_apple(push.replace(from_display_name="Alice"), NOW)
    assert titled.payload["aps"]["alert"]["title"] == "Alice"


@pytest.mark.parametrize(("media", "title"), [("audio", "New audio message"),
                                               ("video", "New video message"),
                                               ("file-transfer", "New file")])
def test_apple_transfer(media, title):
    push = make_push(Event.TRANSFER, media_type=media, filename="a.ogg", filetype="audio/ogg")
    note = SYLK.build_apple(push, NOW)
    assert note.headers["apns-push-type"] == "alert"
    assert note.payload["aps"] == {
        "alert": {"title": title, "body": "From sip:alice@example.com"},
        "sound": "default", "mutable-content": 1, "badge": 1,
    }
    assert note.payload["data"] == {
        "event": "transfer", "from_uri": "sip:alice@example.com", "from_display_name": "Alice",
        "to_uri": "sip:bob@example.com", "file-id": "call-42", "media-type": media,
        "metadata": {"filename": "a.ogg", "filetype": "audio/ogg"},
    }


# -- Firebase --------------------------------------------------------------------------------------


def assert_all_strings(data):
    assert all(isinstance(v, str) for v in data.values()), data


def test_fcm_helpers():
    assert fcm_data({"a": "x", "b": None, "c": {"k": 1}, "d": 3, "e": True}) == {
        "a": "x", "c": '{"k":1}', "d": "3", "e": "true"}
    push = make_push(expires_at=NOW + 30.7)
    assert fcm_ttl(push, NOW) == "30s"
    assert fcm_ttl(push, NOW + 100) == "0s"
    assert fcm_ttl(make_push(expires_at=NOW + 10**9), NOW) == "2419200s"


@pytest.mark.parametrize("event", [Event.INCOMING_SESSION, Event.INCOMING_CONFERENCE_REQUEST])
def test_firebase_call(event):
    push = make_push(event, platform="firebase", from_display_name=None, account="r@c")
    note = SYLK.build(push, "firebase", NOW)
    assert dict(note.headers) == {}
    message = note.payload["message"]
    assert message["token"] == "tok"
    assert message["android"] == {"priority": "high", "ttl": "45s"}
    expected = {
        "event": event.value, "call-id": "call-42", "session-id": session_id("call-42"),
        "media-type": "audio", "from_uri": "sip:alice@example.com",
        "from_display_name": "sip:alice@example.com",  # falls back to from
        "to_uri": "sip:bob@example.com",
    }
    if event is Event.INCOMING_CONFERENCE_REQUEST:
        expected["account"] = "r@c"
    assert message["data"] == expected
    assert set(message) == {"token", "data", "android"}


def test_firebase_cancel_drops_null_reason():
    note = SYLK.build_firebase(make_push(Event.CANCEL, media_type=None, reason=None), NOW)
    data = note.payload["message"]["data"]
    assert data == {"event": "cancel", "call-id": "call-42", "session-id": session_id("call-42")}


def test_firebase_message():
    push = make_push(Event.MESSAGE, media_type="sms", content="hi", content_type="text/plain",
                     expires_at=NOW + 86400)
    message = SYLK.build_firebase(push, NOW).payload["message"]
    assert message["apns"] == {"headers": {"apns-priority": "5"}}
    assert message["android"] == {"priority": "high", "ttl": "86400s"}
    assert message["data"] == {
        "event": "message", "message_id": "call-42", "from_uri": "sip:alice@example.com",
        "from_display_name": "Alice", "to_uri": "sip:bob@example.com", "content": "hi",
        "content_type": "text/plain",
    }


def test_firebase_transfer():
    push = make_push(Event.TRANSFER, media_type="video", filename="v.mp4", filetype=None)
    message = SYLK.build_firebase(push, NOW).payload["message"]
    assert_all_strings(message["data"])
    assert json.loads(message["data"]["metadata"]) == {"filename": "v.mp4", "filetype": None}
    assert message["data"]["file-id"] == "call-42"
    assert message["notification"] == {"title": "New video message",
                                       "body": "From sip:alice@example.com"}
    assert message["android"] == {
        "priority": "high", "ttl": "45s",
        "notification": {"channel_id": "sylk-messages-sound", "sound": "default",
                         "default_sound": True, "notification_priority": "PRIORITY_HIGH"},
    }


@pytest.mark.parametrize("event", list(Event))
def test_firebase_data_values_are_always_strings(event):
    push = make_push(event, badge=7, filename=None, reason=None, content=None)
    assert_all_strings(SYLK.build_firebase(push, NOW).payload["message"]["data"])


def test_unknown_platform_is_404():
    with pytest.raises(PushValidationError) as info:
        SYLK.build(make_push(), "huawei", NOW)
    assert info.value.status == 404
