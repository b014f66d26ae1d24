"""Admission: Sylk JSON -> PushRequest -> Push: type coercion, every validation message, deadlines."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.apps.linphone import LinphoneAppType
from sidecar.apps.sylk import SylkAppType
from sidecar.config import AppConfig, Settings
import dataclasses

from sidecar.admission import admit, life_left, parse_json_fields, request_from_json
from sidecar.model import Event, PushRequest, PushValidationError

APP_TYPES = {"sylk": SylkAppType(), "linphone": LinphoneAppType()}


def make_settings() -> Settings:
    apps = [
        AppConfig(section="a", app_id="com.ag.sylk", app_type="sylk", platform="apple"),
        AppConfig(section="b", app_id="com.ag.sylk", app_type="sylk", platform="firebase"),
        AppConfig(section="c", app_id="org.linphone", app_type="linphone", platform="apple"),
        AppConfig(section="d", app_id="com.x.hms", app_type="sylk", platform="huawei"),
    ]
    return Settings(config_dir=Path("/nonexistent"), applications={a.key: a for a in apps})


SETTINGS = make_settings()


def sylk_fields(**changes):
    fields = {
        "app-id": "com.ag.sylk",
        "platform": "apple",
        "token": "abc123",
        "call-id": "call-1",
        "from": "sip:alice@example.com",
        "to": "sip:bob@example.com",
        "event": "incoming_session",
        "media-type": "audio",
        "silent": True,
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def build(fields, ttl=None, **kwargs):
    kwargs.setdefault("now", 1000.0)
    kwargs.setdefault("wall_now", 1_700_000_000.0)
    request = fields if isinstance(fields, PushRequest) else request_from_json(fields)
    request = dataclasses.replace(request, ttl=ttl)
    return admit(request, settings=SETTINGS, app_types=APP_TYPES, source="test", **kwargs)


def expect_error(fields, message, status):
    with pytest.raises(PushValidationError) as info:
        build(fields)
    assert info.value.message == message
    assert info.value.status == status


# -- parse_json_fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(True, True), (False, False), (1, True), (0, False), ("1", True), ("0", False),
     ("true", True), ("false", False), ("True", True), ("FALSE", False)],
)
def test_silent_coercions(raw, expected):
    assert parse_json_fields({"silent": raw})["silent"] is expected


@pytest.mark.parametrize("raw", [2, "maybe", 1.5, [], {}])
def test_silent_rejects_non_booleans(raw):
    with pytest.raises(PushValidationError, match="Field 'silent' must be a boolean") as info:
        parse_json_fields({"silent": raw})
    assert info.value.status == 400


@pytest.mark.parametrize(("raw", "expected"), [(3, 3), ("3", 3), (" 7 ", 7), (2.0, 2), ("-1", -1)])
def test_badge_coercions(raw, expected):
    assert parse_json_fields({"badge": raw})["badge"] == expected


@pytest.mark.parametrize("raw", ["three", 1.5, True, [1]])
def test_badge_rejects_non_integers(raw):
    with pytest.raises(PushValidationError, match="Field 'badge' must be an integer"):
        parse_json_fields({"badge": raw})


def test_nulls_mean_not_given():
    fields = parse_json_fields({"reason": None, "filename": None, "filetype": None,
                              "from-display-name": None, "token": "t"})
    assert fields == {"token": "t"}


def test_strings_must_be_strings():
    with pytest.raises(PushValidationError, match="Field 'call-id' must be a string"):
        parse_json_fields({"call-id": 12})


def test_unknown_and_snake_case_keys_are_ignored():
    assert parse_json_fields({"app_id": "x", "call_id": "y", "other": 1}) == {}


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_body_must_be_an_object(body):
    with pytest.raises(PushValidationError, match="must be a JSON object"):
        parse_json_fields(body)


def test_user_agent_string_none_is_kept():
    assert parse_json_fields({"user-agent": "None"})["user-agent"] == "None"


# -- admit: required fields ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["app-id", "platform", "token", "call-id", "from"])
def test_required_fields(key):
    expect_error(sylk_fields(**{key: None}), f"Field '{key}' required", 400)


@pytest.mark.parametrize("key", ["silent", "to", "event"])
def test_sylk_requires_silent_to_event(key):
    expect_error(sylk_fields(**{key: None}), f"Field '{key}' required", 400)


def test_media_type_required_unless_cancel():
    expect_error(sylk_fields(**{"media-type": None}), "Field 'media-type' required", 400)
    push, _, _ = build(sylk_fields(**{"media-type": None, "event": "cancel", "reason": "x"}))
    assert push.event is Event.CANCEL and push.media_type is None


def test_invalid_event_names_value_and_choices():
    with pytest.raises(PushValidationError) as info:
        build(sylk_fields(event="ring"))
    assert info.value.status == 400
    assert "'ring'" in info.value.message
    for name in ("incoming_session", "incoming_conference_request", "cancel", "message", "transfer"):
        assert name in info.value.message


def test_invalid_media_type_names_value_and_choices():
    with pytest.raises(PushValidationError) as info:
        build(sylk_fields(**{"media-type": "hologram"}))
    assert info.value.status == 400
    assert "'hologram'" in info.value.message and "file-transfer" in info.value.message


# -- admit: platforms and applications ---------------------------------------------------


@pytest.mark.parametrize(("alias", "canonical"), [
    ("apple", "apple"), ("ios", "apple"), ("apns", "apple"), ("iOS", "apple"),
    ("firebase", "firebase"), ("android", "firebase"), ("fcm", "firebase"),
])
def test_platform_aliases(alias, canonical):
    push, app, _ = build(sylk_fields(platform=alias))
    assert push.platform == canonical == app.platform


def test_unknown_platform_is_404():
    expect_error(sylk_fields(platform="windows"), "'windows' platform is not configured", 404)


def test_plugin_platform_is_known_when_configured():
    push, app, _ = build(sylk_fields(**{"app-id": "com.x.hms", "platform": "huawei"}))
    assert app.platform == "huawei" and push.platform == "huawei"


def test_unconfigured_application_names_platform_capitalised():
    expect_error(sylk_fields(**{"app-id": "com.other"}), "Apple com.other app is not configured", 404)
    expect_error(sylk_fields(**{"app-id": "org.linphone", "platform": "android"}),
                 "Firebase org.linphone app is not configured", 404)


# -- admit: linphone rules -----------------------------------------------------------------


def linphone_fields(**changes):
    base = {"app-id": "org.linphone", "platform": "ios", "token": "t", "call-id": "c",
            "from": "sip:a@b", "media-type": "audio"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_linphone_defaults_event_and_needs_no_to_or_silent():
    push, _, app_type = build(linphone_fields())
    assert push.event is Event.INCOMING_SESSION
    assert push.to_uri == "" and push.silent is True
    assert app_type.name == "linphone"


@pytest.mark.parametrize("event", ["cancel", "message", "incoming_conference_request"])
def test_linphone_refuses_other_events(event):
    with pytest.raises(PushValidationError) as info:
        build(linphone_fields(event=event))
    assert info.value.status == 404 and event in info.value.message


# -- admit: the Push ---------------------------------------------------------------------------


def test_push_fields_and_deadline():
    fields = request_from_json({
        **sylk_fields(event="message", silent="0", badge="4"),
        "content": "hi", "content-type": "text/plain", "from-display-name": "Alice",
        "device-id": "dev1", "account": "a@b", "media-type": "sms",
    })
    push, _, _ = build(fields, now=500.0, wall_now=1_700_000_000.0)
    assert push.event is Event.MESSAGE
    assert push.silent is False and push.badge == 4
    assert (push.content, push.content_type, push.from_display_name) == ("hi", "text/plain", "Alice")
    assert (push.device_id, push.account, push.source) == ("dev1", "a@b", "test")
    assert push.deadline == 500.0 + 24 * 3600
    assert push.expires_at == 1_700_000_000.0 + 24 * 3600


def test_call_default_ttl_and_explicit_ttl():
    push, _, _ = build(sylk_fields(), now=10.0, wall_now=100.0)
    assert (push.deadline, push.expires_at) == (55.0, 145.0)
    push, _, _ = build(sylk_fields(), now=10.0, wall_now=100.0, ttl=5)
    assert (push.deadline, push.expires_at) == (15.0, 105.0)


def test_defaults_silent_true_badge_one():
    push, _, _ = build(linphone_fields())
    assert push.silent is True and push.badge == 1


def test_text_checks_name_the_field():
    import pytest

    from sidecar.admission import check_text
    from sidecar.model import PushValidationError

    assert check_text("content", "line one\r\nline two\tend") == "line one\r\nline two\tend"
    for key, value, words in [("call-id", "a\nb", "control character"), ("token", "x\x00", "control character"),
                              ("device-id", "\ud800", "lone surrogate"), ("from", "a" * 1025, "longer than 1024"),
                              ("content", "x\x07", "control character")]:
        with pytest.raises(PushValidationError) as info:
            check_text(key, value)
        assert f"'{key}'" in info.value.message and words in info.value.message and info.value.status == 400


def test_time_to_live_counts_from_sent_at_and_never_grows():
    assert life_left("incoming_session", None, None, 1000.0) == 45
    assert life_left("message", None, None, 1000.0) == 24 * 3600
    assert life_left("incoming_session", 30, 990.0, 1000.0) == 20  # sent 10 s ago
    assert life_left("incoming_session", None, 900.0, 1000.0) == 0  # long gone
    assert life_left("incoming_session", 30, 5000.0, 1000.0) == 30  # a sender clock ahead of ours


def test_sent_at_shortens_the_deadline():
    request = dataclasses.replace(request_from_json(sylk_fields()), sent_at=1_699_999_990.0)
    push, _, _ = admit(request, settings=SETTINGS, app_types=APP_TYPES, source="zmq",
                       now=10.0, wall_now=1_700_000_000.0)
    assert push.deadline == 10.0 + 35  # 45 s default, sent 10 s ago


def test_text_is_checked_for_requests_not_from_json():
    request = dataclasses.replace(request_from_json(sylk_fields()), to_uri="sip:b\nx")
    with pytest.raises(PushValidationError, match="Field 'to' contains a control character"):
        build(request)


def test_request_fields_reach_the_push_unchanged():
    """Every PushRequest field arrives in the Push: a new field needs no admission code."""
    values = {"filename": "f.png", "filetype": "image/png", "reason": "r", "account": "c@conf"}
    push, _, _ = build(dataclasses.replace(request_from_json(sylk_fields()), **values, sandbox=True))
    assert {k: getattr(push, k) for k in values} == values and push.sandbox is True


def test_the_openapi_model_documents_every_json_field_of_the_request():
    """The /docs model is written by hand: a new PushRequest field must be shown there too."""
    from sidecar.admission import JSON_FIELDS
    from sidecar.ingress.api_docs import PushRequestDoc

    documented = {field.alias or name for name, field in PushRequestDoc.model_fields.items()}
    assert documented == set(JSON_FIELDS)
