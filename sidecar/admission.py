"""Admission: a :class:`~sidecar.model.PushRequest` -> a :class:`~sidecar.model.Push`.

The one place where a push is validated and completed, whatever door it
came through; below every ingress.  Two steps:

1. Decoding Sylk's JSON (HTTP v1 and v2): :func:`request_from_json` checks
   the JSON types with the lenient coercion of Sylk Pushserver (pydantic
   v1), because that is what real clients send: ``silent`` as ``"1"`` or
   ``0``, ``badge`` as ``"3"``, ``null`` for optional fields.  The ZeroMQ
   ingress builds its request from the typed wire message instead.
2. :func:`admit` applies the rules that need the configuration (platform,
   application, app type), checks event and media type, applies the
   defaults and the one time-to-live rule (:func:`life_left`), and builds
   the Push.  Messages and statuses are Sylk's (they name the JSON keys).
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any
from collections.abc import Mapping

from .apps.base import AppType
from .config import AppConfig, Settings
from .model import (
    EVENTS,
    MEDIA_TYPES,
    PLATFORM_ALIASES,
    Event,
    Push,
    PushRequest,
    PushValidationError,
    canonical_platform,
    default_ttl,
)

_REQUEST_FIELDS = dataclasses.fields(PushRequest)
#: Sylk JSON key -> PushRequest attribute, for the fields JSON carries
JSON_FIELDS = {f.metadata["json"]: f.name for f in _REQUEST_FIELDS if "json" in f.metadata}
#: JSON keys of text values, in the order their errors are reported;
#: ``user-agent`` is a stored device's (v2 token routes), not a push's
STRING_FIELDS = tuple(
    f.metadata["json"] for f in _REQUEST_FIELDS if f.metadata.get("kind") is str
) + ("user-agent",)
BOOL_FIELDS = tuple(f.metadata["json"] for f in _REQUEST_FIELDS if f.metadata.get("kind") is bool)
INT_FIELDS = tuple(f.metadata["json"] for f in _REQUEST_FIELDS if f.metadata.get("kind") is int)
_TEXT_KEYS = tuple(f.metadata["json"] for f in _REQUEST_FIELDS if f.metadata.get("kind") is str)
_text_values = operator.attrgetter(*(f.name for f in _REQUEST_FIELDS if f.metadata.get("kind") is str))
_REQUEST_NAMES = tuple(f.name for f in _REQUEST_FIELDS)
_request_values = operator.attrgetter(*_REQUEST_NAMES)

#: longest accepted value of a text field (characters); others: DEFAULT_MAX_LENGTH
MAX_LENGTH = {
    "token": 4096,  # APNs tokens are 64 hex digits, FCM ones about 160; room for '<voip>-<regular>'
    "content": 16384,  # a message text
    "from-display-name": 512,
    "user-agent": 512,
}
DEFAULT_MAX_LENGTH = 1024
_STRING_LIMITS = tuple((key, MAX_LENGTH.get(key, DEFAULT_MAX_LENGTH)) for key in STRING_FIELDS)

#: fields every push needs, in the order they are reported when missing
REQUIRED_FIELDS = ("app-id", "platform", "token", "call-id", "from")
#: (JSON key, longest value) of the text fields of a request, in their order
_TEXT_LIMITS = tuple((key, MAX_LENGTH.get(key, DEFAULT_MAX_LENGTH)) for key in _TEXT_KEYS)

# pydantic v1's accepted spellings of booleans (what Sylk accepted).
_TRUE_WORDS = frozenset({"1", "true", "on", "yes", "y", "t"})
_FALSE_WORDS = frozenset({"0", "false", "off", "no", "n", "f"})

_EVENT_LIST = ", ".join(sorted(EVENTS))
_MEDIA_LIST = ", ".join(sorted(MEDIA_TYPES))


# -- step 1: Sylk's JSON ----------------------------------------------------------------------


def parse_json_fields(body: Any) -> dict[str, Any]:
    """Check and coerce the types of a decoded Sylk JSON body.

    Unknown keys are ignored (as Sylk did); ``null`` means "not given".

    Returns:
        The known fields present, keyed by their JSON names, with str, bool
        (``silent``) and int (``badge``) values.

    Raises:
        PushValidationError: 400 when the body is not an object or a value
          has the wrong type.
    """
    if not isinstance(body, dict):
        raise PushValidationError("Request body must be a JSON object", 400)
    fields: dict[str, Any] = {}
    for key, limit in _STRING_LIMITS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PushValidationError(f"Field '{key}' must be a string", 400)
        # The usual value: short, printable ASCII; anything else is looked at closely.
        if not (len(value) <= limit and value.isascii() and value.isprintable()):
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


def request_from_json(body: Any) -> PushRequest:
    """The push request of a decoded Sylk JSON body (see :func:`parse_json_fields`)."""
    fields = parse_json_fields(body)
    return PushRequest(**{JSON_FIELDS[key]: value for key, value in fields.items() if key in JSON_FIELDS})


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


def check_request_text(request: PushRequest) -> None:
    """:func:`check_text` on every text field of ``request`` (named by its JSON key)."""
    for (key, limit), value in zip(_TEXT_LIMITS, _text_values(request), strict=True):
        # The usual value: short, printable ASCII; anything else is looked at closely.
        if value is not None and not (len(value) <= limit and value.isascii() and value.isprintable()):
            check_text(key, value)


def require(request: PushRequest, keys: tuple[str, ...]) -> None:
    """Refuse ``request`` if a field of ``keys`` (JSON names) is not given.

    Raises:
        PushValidationError: 400 naming the first missing one.
    """
    for key in keys:
        if getattr(request, JSON_FIELDS[key]) is None:
            raise PushValidationError(f"Field '{key}' required", 400)


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
    platform_given: str, app_id: str, settings: Settings, app_types: Mapping[str, AppType]
) -> tuple[str, AppConfig, AppType]:
    """Find the configured application ``app_id`` on ``platform_given`` (any alias).

    Returns:
        (canonical platform, application, its app type).

    Raises:
        PushValidationError: 404 for an unknown platform or application.
    """
    platform = canonical_platform(platform_given)
    known = platform in PLATFORM_ALIASES.values() or any(
        configured == platform for _, configured in settings.applications
    )
    if not known:
        raise PushValidationError(f"'{platform_given}' platform is not configured", 404)
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


# -- step 2: admission --------------------------------------------------------------------------


def life_left(event: str, ttl: float | None, sent_at: float | None, wall_now: float) -> float:
    """The one time-to-live rule: seconds a push of ``event`` is still worth sending.

    ``ttl`` is the sender's (None: :func:`~sidecar.model.default_ttl`);
    counted from ``sent_at`` when the sender said when it sent it (ZeroMQ),
    never lengthened by a sender's clock ahead of ours.
    """
    life = float(default_ttl(event) if ttl is None else ttl)
    if sent_at is None:
        return life
    return max(0.0, min(life, sent_at + life - wall_now))


def admit(
    request: PushRequest,
    *,
    settings: Settings,
    app_types: Mapping[str, AppType],
    source: str,
    now: float,
    wall_now: float,
    peer: str | None = None,
) -> tuple[Push, AppConfig, AppType]:
    """Validate ``request`` against the configuration and build the Push.

    Args:
        request: what the sender asked for.
        settings: the configuration snapshot to use for the whole request.
        app_types: app types by name.
        source: where the push came from (``http``, ``http-v2``, ``zmq``...).
        now: the trio clock (``trio.current_time()``).
        wall_now: UNIX time (``time.time()``).
        peer: who sent it (``host:port`` of an HTTP client, a ZeroMQ endpoint).

    Returns:
        (push, its application, its app type).

    Raises:
        PushValidationError: with Sylk's message and status (400 or 404).
    """
    require(request, REQUIRED_FIELDS)
    check_request_text(request)  # again for HTTP (cheap); ZeroMQ's only check
    assert request.platform is not None and request.app_id is not None  # required above
    platform, app, app_type = resolve_application(request.platform, request.app_id, settings, app_types)
    checked = app_type.check_request(request)

    event_name = checked.event or Event.INCOMING_SESSION.value
    if event_name not in EVENTS:
        raise PushValidationError(
            f"Invalid event '{event_name}', expected one of: {_EVENT_LIST}", 400
        )
    event = Event(event_name)
    media_type = checked.media_type
    if media_type is None:
        if event is not Event.CANCEL:
            raise PushValidationError("Field 'media-type' required", 400)
    elif media_type not in MEDIA_TYPES:
        raise PushValidationError(
            f"Invalid media-type '{media_type}', expected one of: {_MEDIA_LIST}", 400
        )

    life = life_left(event_name, checked.ttl, checked.sent_at, wall_now)
    values = dict(zip(_REQUEST_NAMES, _request_values(checked), strict=True))
    values.update(
        platform=platform,
        event=event,
        to_uri=checked.to_uri or "",
        silent=True if checked.silent is None else bool(checked.silent),
        badge=1 if checked.badge is None else int(checked.badge),
    )
    push = Push(**values, deadline=now + life, expires_at=wall_now + life, source=source, peer=peer)
    return push, app, app_type
