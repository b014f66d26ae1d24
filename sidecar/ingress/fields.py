"""Sylk request fields -> :class:`~sidecar.model.Push`, shared by every ingress.

Two steps, kept apart so the ZeroMQ ingress can skip the first:

1. :func:`parse_v1_fields` checks the JSON types of a v1 request with the
   lenient coercion of Sylk Pushserver (pydantic v1), because that is what
   real clients send: ``silent`` as ``"1"`` or ``0``, ``badge`` as ``"3"``,
   ``null`` for optional fields.
2. :func:`build_push` applies the rules that need the configuration
   (platform, application, app type), checks event and media type, and
   builds the Push with its deadline.  Messages and statuses are Sylk's.

Both take and return dictionaries keyed by the hyphenated Sylk names
(``app-id``, ``call-id``, ``from``...), with absent keys meaning "not given".
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ..apps.base import AppType
from ..config import AppConfig, Settings
from ..model import (
    DEFAULT_TTL,
    EVENTS,
    MEDIA_TYPES,
    PLATFORM_ALIASES,
    Event,
    Push,
    PushValidationError,
    canonical_platform,
)

STRING_FIELDS = (
    "app-id",
    "platform",
    "token",
    "call-id",
    "from",
    "to",
    "event",
    "device-id",
    "from-display-name",
    "media-type",
    "reason",
    "filename",
    "filetype",
    "account",
    "content",
    "content-type",
    "user-agent",
)
#: longest accepted value of a text field (characters); others: DEFAULT_MAX_LENGTH
MAX_LENGTH = {
    "token": 4096,  # APNs tokens are 64 hex digits, FCM ones about 160; room for '<voip>-<regular>'
    "content": 16384,  # a message text
    "from-display-name": 512,
    "user-agent": 512,
}
DEFAULT_MAX_LENGTH = 1024

BOOL_FIELDS = ("silent",)
INT_FIELDS = ("badge",)

#: fields every push needs, in the order they are reported when missing
REQUIRED_FIELDS = ("app-id", "platform", "token", "call-id", "from")

# pydantic v1's accepted spellings of booleans (what Sylk accepted).
_TRUE_WORDS = frozenset({"1", "true", "on", "yes", "y", "t"})
_FALSE_WORDS = frozenset({"0", "false", "off", "no", "n", "f"})

_EVENT_LIST = ", ".join(sorted(EVENTS))
_MEDIA_LIST = ", ".join(sorted(MEDIA_TYPES))


def parse_v1_fields(body: Any) -> dict[str, Any]:
    """Check and coerce the types of a decoded v1 JSON body.

    Unknown keys are ignored (as Sylk did); ``null`` means "not given".

    Returns:
        The known fields present, with str, bool (``silent``) and int
        (``badge``) values.

    Raises:
        PushValidationError: 400 when the body is not an object or a value
          has the wrong type.
    """
    if not isinstance(body, dict):
        raise PushValidationError("Request body must be a JSON object", 400)
    fields: dict[str, Any] = {}
    for key in STRING_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PushValidationError(f"Field '{key}' must be a string", 400)
        check_text(key, value)
        fields[key] = value
    for key in BOOL_FIELDS:
        value = body.get(key)
        if value is not None:
            fields[key] = coerce_bool(key, value)
    for key in INT_FIELDS:
        value = body.get(key)
        if value is not None:
            fields[key] = coerce_int(key, value)
    return fields


def check_text(key: str, value: str) -> str:
    """Refuse a text field that is too long or not valid Unicode; return it.

    Lone UTF-16 surrogates (``"\\ud800"`` in JSON) decode to a Python str
    that cannot be encoded: it would break the log line of the push, the
    payload sent to the push service and the token store.  NUL and other C0
    controls but tab are refused too (they end strings in C and split logs);
    ``content`` (a message's text) may also hold CR and LF.

    Raises:
        PushValidationError: 400 naming the field.
    """
    limit = MAX_LENGTH.get(key, DEFAULT_MAX_LENGTH)
    if len(value) > limit:
        raise PushValidationError(f"Field '{key}' is longer than {limit} characters", 400)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PushValidationError(
                f"Field '{key}' is not valid Unicode (lone surrogate)", 400) from None
    if not value.isprintable() and (_TEXT_CONTROL if key in MULTILINE_FIELDS else _CONTROL).search(value):
        raise PushValidationError(f"Field '{key}' contains a control character", 400)
    return value


#: free text that may hold line breaks (a message's text); other fields are one line
MULTILINE_FIELDS = frozenset({"content"})
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_fields_text(fields: Mapping[str, Any]) -> None:
    """:func:`check_text` on every str value of ``fields`` (what an ingress
    that skips :func:`parse_v1_fields`, such as ZeroMQ, hands over)."""
    for key, value in fields.items():
        if value.__class__ is str:
            check_text(key, value)


def coerce_bool(key: str, value: Any) -> bool:
    """true/false, 1/0, "1"/"0", "true"/"false" (and pydantic v1's other words)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise PushValidationError(f"Field '{key}' must be a boolean", 400)


def coerce_int(key: str, value: Any) -> int:
    """An int, an integral float, or a string holding an integer."""
    if isinstance(value, bool):
        raise PushValidationError(f"Field '{key}' must be an integer", 400)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise PushValidationError(f"Field '{key}' must be an integer", 400)


def resolve_application(
    fields: Mapping[str, Any], settings: Settings, app_types: Mapping[str, AppType]
) -> tuple[str, AppConfig, AppType]:
    """Find the configured application of ``fields`` (app-id + platform).

    Returns:
        (canonical platform, application, its app type).

    Raises:
        PushValidationError: 404 for an unknown platform or application.
    """
    given = fields["platform"]
    platform = canonical_platform(given)
    known = platform in PLATFORM_ALIASES.values() or any(
        configured == platform for _, configured in settings.applications
    )
    if not known:
        raise PushValidationError(f"'{given}' platform is not configured", 404)
    app_id = fields["app-id"]
    app = settings.application(app_id, platform)
    if app is None:
        raise PushValidationError(f"{platform.capitalize()} {app_id} app is not configured", 404)
    app_type = app_types.get(app.app_type)
    if app_type is None:
        # Config validation normally prevents this; a reload race could not.
        raise PushValidationError(
            f"app type '{app.app_type}' of application [{app.section}] is not loaded", 500
        )
    return platform, app, app_type


def build_push(
    fields: Mapping[str, Any],
    *,
    settings: Settings,
    app_types: Mapping[str, AppType],
    source: str,
    now: float,
    wall_now: float,
    ttl: float | None = None,
    peer: str | None = None,
) -> tuple[Push, AppConfig, AppType]:
    """Validate ``fields`` against the configuration and build the Push.

    Args:
        fields: hyphenated Sylk keys with typed values (as
          :func:`parse_v1_fields` returns them: ``silent`` a bool, ``badge``
          an int); absent keys are "not given".
        settings: the configuration snapshot to use for the whole request.
        app_types: app types by name.
        source: where the push came from (``http``, ``http-v2``, ``zmq``...).
        now: the trio clock (``trio.current_time()``).
        wall_now: UNIX time (``time.time()``).
        ttl: the push's useful life in seconds; default
          :data:`~sidecar.model.DEFAULT_TTL` of its event.
        peer: who sent it (``host:port`` of an HTTP client, a ZeroMQ endpoint).

    Returns:
        (push, its application, its app type).

    Raises:
        PushValidationError: with Sylk's message and status (400 or 404).
    """
    for key in REQUIRED_FIELDS:
        if fields.get(key) is None:
            raise PushValidationError(f"Field '{key}' required", 400)
    check_fields_text(fields)  # again for ZeroMQ, which skips parse_v1_fields (cheap)
    platform, app, app_type = resolve_application(fields, settings, app_types)
    checked = app_type.check_request(fields)

    event_name = checked.get("event") or Event.INCOMING_SESSION.value
    if event_name not in EVENTS:
        raise PushValidationError(
            f"Invalid event '{event_name}', expected one of: {_EVENT_LIST}", 400
        )
    event = Event(event_name)
    media_type = checked.get("media-type")
    if media_type is None:
        if event is not Event.CANCEL:
            raise PushValidationError("Field 'media-type' required", 400)
    elif media_type not in MEDIA_TYPES:
        raise PushValidationError(
            f"Invalid media-type '{media_type}', expected one of: {_MEDIA_LIST}", 400
        )

    life = DEFAULT_TTL[event] if ttl is None else ttl
    badge = checked.get("badge")
    silent = checked.get("silent")
    push = Push(
        app_id=checked["app-id"],
        platform=platform,
        token=checked["token"],
        event=event,
        call_id=checked["call-id"],
        from_uri=checked["from"],
        to_uri=checked.get("to") or "",
        deadline=now + life,
        expires_at=wall_now + life,
        media_type=media_type,
        from_display_name=checked.get("from-display-name"),
        device_id=checked.get("device-id"),
        silent=True if silent is None else bool(silent),
        reason=checked.get("reason"),
        badge=1 if badge is None else int(badge),
        filename=checked.get("filename"),
        filetype=checked.get("filetype"),
        account=checked.get("account"),
        content=checked.get("content"),
        content_type=checked.get("content-type"),
        source=source,
        peer=peer,
    )
    return push, app, app_type
