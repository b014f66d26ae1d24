"""The linphone app type: VoIP pushes on Apple, data messages on Firebase."""

from __future__ import annotations

import time

import pytest

from sidecar.apps.linphone import LinphoneAppType, send_time
from sidecar.model import Event, Push, PushRequest, PushValidationError

NOW = 1_700_000_000.0
LINPHONE = LinphoneAppType()


def make_push(**changes) -> Push:
    values = dict(
        app_id="org.linphone.phone.dev", platform="apple", token="tok",
        event=Event.INCOMING_SESSION, call_id="c-1", from_uri="sip:alice@example.com",
        to_uri="", deadline=45.0, expires_at=NOW + 45, media_type="audio",
    )
    values.update(changes)
    return Push(**values)


def test_send_time_is_local_time():
    assert send_time(NOW) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW))


def test_check_request_defaults_event():
    assert LINPHONE.check_request(PushRequest(to_uri="x")) == PushRequest(to_uri="x", event="incoming_session")
    assert LINPHONE.check_request(PushRequest(event="incoming_session")).event == "incoming_session"


def test_check_request_refuses_other_events_with_404():
    with pytest.raises(PushValidationError) as info:
        LINPHONE.check_request(PushRequest(event="cancel"))
    assert info.value.status == 404
    assert "cancel" in info.value.message and "linphone" in info.value.message


def test_apple_headers_voip():
    note = LINPHONE.build(make_push(), "apple", NOW)
    assert note.headers == {
        "apns-topic": "org.linphone.phone.voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-expiration": str(int(NOW + 45)),
    }
    already = LINPHONE.build_apple(make_push(app_id="org.linphone.phone.voip.prod"), NOW)
    assert already.headers["apns-topic"] == "org.linphone.phone.voip"


def test_apple_silent_payload():
    note = LINPHONE.build_apple(make_push(silent=True), NOW)
    assert dict(note.payload) == {
        "aps": {"sound": "", "loc-key": "IC_SIL", "call-id": "c-1", "send-time": send_time(NOW)},
        "from-uri": "sip:alice@example.com",
        "pn_ttl": 2592000,
    }


def test_apple_alert_payload_has_loc_args_array():
    note = LINPHONE.build_apple(make_push(silent=False), NOW)
    assert dict(note.payload) == {
        "aps": {"alert": {"loc-key": "IC_MSG", "loc-args": ["sip:alice@example.com"]},
                "sound": "msg.caf", "badge": 1},
        "pn_ttl": 2592000,
        "call-id": "c-1",
        "send-time": send_time(NOW),
    }


def test_firebase_payload():
    note = LINPHONE.build(make_push(platform="firebase"), "firebase", NOW + 5)
    assert dict(note.headers) == {}
    assert note.payload == {"message": {
        "token": "tok",
        "data": {"call-id": "c-1", "sip-from": "sip:alice@example.com", "loc-key": "",
                 "loc-args": "sip:alice@example.com", "send-time": send_time(NOW + 5)},
        "android": {"priority": "high", "ttl": "40s"},
    }}
