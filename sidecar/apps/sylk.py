"""The ``sylk`` app type: payloads for Sylk Mobile (and SylkServer clients).

Layout of every request follows Sylk Pushserver 2.1 (see the README's
compatibility section); two things are fixed on purpose:

- ``apns-expiration`` is an absolute UNIX time (the push's ``expires_at``),
  not the constant 120 the original sent (a date in 1970, so Apple never
  stored the push for an offline phone).
- FCM ``data`` values are all strings: nulls are dropped and nested values
  (the transfer ``metadata``) are JSON-encoded, as FCM requires.

The small helpers at the top (topic, expiration, FCM ttl and data) are shared
with the ``linphone`` app type.
"""

from __future__ import annotations

import json
from typing import Any
from collections.abc import Mapping

from ..model import Event, Push, PushRequest, PushValidationError, session_id
from ..pns.base import Notification
from .base import AppType

#: FCM's largest accepted ``android.ttl`` (28 days).
FCM_MAX_TTL_SECONDS = 2419200


# -- helpers shared by the built-in app types ------------------------------------------


def topic_base(app_id: str) -> str:
    """The bundle id: the app-id without a trailing ``.dev`` / ``.prod`` label."""
    for label in (".dev", ".prod"):
        if app_id.endswith(label):
            return app_id[: -len(label)]
    return app_id


def voip_topic(app_id: str) -> str:
    """The VoIP topic (``<bundle>.voip``), not doubling an existing ``.voip``."""
    base = topic_base(app_id)
    return base if base.endswith(".voip") else f"{base}.voip"


def apns_headers(push: Push, *, topic: str, push_type: str, priority: int) -> dict[str, str]:
    """APNs request headers; the expiration is the push's absolute UNIX expiry."""
    return {
        "apns-topic": topic,
        "apns-push-type": push_type,
        "apns-priority": str(priority),
        "apns-expiration": str(max(0, int(push.expires_at))),
    }


def fcm_ttl(push: Push, now: float) -> str:
    """``android.ttl``: what is left of the push's life, within FCM's 0..28 days.

    A call push lives about 45 s, so its ttl is at most that; a message lives
    a day.  Sylk sent a constant ``60s``; the remaining life says the same
    thing for calls and keeps messages for offline phones.
    """
    remaining = int(push.expires_at - now)
    return f"{min(max(remaining, 0), FCM_MAX_TTL_SECONDS)}s"


def fcm_data(values: Mapping[str, Any]) -> dict[str, str]:
    """FCM ``data``: strings as they are, nulls dropped, anything else as JSON."""
    return {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in values.items()
        if value is not None
    }


def fcm_message(push: Push, now: float, data: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The FCM HTTP v1 body ``{"message": {...}}`` with a high-priority android block.

    ``extra`` entries are merged into the message; an ``android`` entry is
    merged into the default android block.
    """
    android: dict[str, Any] = {"priority": "high", "ttl": fcm_ttl(push, now)}
    android.update(extra.pop("android", {}))
    message: dict[str, Any] = {"token": push.token, "data": fcm_data(data), "android": android}
    message.update(extra)
    return {"message": message}


# -- the sylk app type -----------------------------------------------------------------------

_TRANSFER_TITLES = {"audio": "New audio message", "video": "New video message"}


class SylkAppType(AppType):
    """Payload rules of ``app_type = sylk``."""

    name = "sylk"

    #: (PushRequest attribute, its Sylk JSON key), in the order they are reported
    REQUIRED_FIELDS = (("silent", "silent"), ("to_uri", "to"), ("event", "event"))

    def check_request(self, request: PushRequest) -> PushRequest:
        """Sylk apps also need ``silent``, ``to`` and ``event`` (400 when missing)."""
        for name, key in self.REQUIRED_FIELDS:
            if getattr(request, name) is None:
                raise PushValidationError(f"Field '{key}' required", 400)
        return request

    # -- per-event dictionaries (the same on both platforms) --

    @staticmethod
    def call_data(push: Push, *, display_name_fallback: bool) -> dict[str, Any]:
        display_name = push.from_display_name
        if display_name_fallback and not display_name:
            display_name = push.from_uri
        data: dict[str, Any] = {
            "event": push.event.value,
            "call-id": push.call_id,
            "session-id": session_id(push.call_id),
            "media-type": push.media_type,
            "from_uri": push.from_uri,
            "from_display_name": display_name,
            "to_uri": push.to_uri,
        }
        if push.event is Event.INCOMING_CONFERENCE_REQUEST:
            data["account"] = push.account
        return data

    @staticmethod
    def cancel_data(push: Push) -> dict[str, Any]:
        return {
            "event": push.event.value,
            "call-id": push.call_id,
            "session-id": session_id(push.call_id),
            "reason": push.reason,
        }

    @staticmethod
    def message_data(push: Push, *, display_name_fallback: bool) -> dict[str, Any]:
        display_name = push.from_display_name
        if display_name_fallback and not display_name:
            display_name = push.from_uri
        return {
            "event": push.event.value,
            "message_id": push.call_id,
            "from_uri": push.from_uri,
            "from_display_name": display_name,
            "to_uri": push.to_uri,
            "content": push.content,
            "content_type": push.content_type,
        }

    @staticmethod
    def transfer_data(push: Push, *, display_name_fallback: bool) -> dict[str, Any]:
        display_name = push.from_display_name
        if display_name_fallback and not display_name:
            display_name = push.from_uri
        return {
            "event": push.event.value,
            "from_uri": push.from_uri,
            "from_display_name": display_name,
            "to_uri": push.to_uri,
            "file-id": push.call_id,
            "media-type": push.media_type,
            "metadata": {"filename": push.filename, "filetype": push.filetype},
        }

    @staticmethod
    def transfer_title(push: Push) -> str:
        return _TRANSFER_TITLES.get(push.media_type or "", "New file")

    # -- Apple --

    def build_apple(self, push: Push, now: float) -> Notification:
        """APNs request for ``push`` (``now``: wall-clock UNIX time, unused here)."""
        base = topic_base(push.app_id)
        event = push.event
        if event.is_call:
            topic = voip_topic(push.app_id)
            headers = apns_headers(push, topic=topic, push_type="voip", priority=10)
            return Notification(headers, self.call_data(push, display_name_fallback=False))
        if event is Event.CANCEL:
            # Not a VoIP push: iOS 13+ kills apps that do not report a VoIP push to CallKit.
            headers = apns_headers(push, topic=base, push_type="background", priority=5)
            return Notification(headers, self.cancel_data(push))
        headers = apns_headers(push, topic=base, push_type="alert", priority=5)
        alert_body = f"From {push.from_uri}"
        if event is Event.MESSAGE:
            payload = {
                "aps": {
                    "alert": {"title": push.from_display_name or "New message", "body": alert_body},
                    "message_id": push.call_id,
                    "sound": "default",
                    "content-available": 1,
                    "mutable-content": 1,
                    "badge": push.badge,
                },
                "data": self.message_data(push, display_name_fallback=False),
            }
            return Notification(headers, payload)
        if event is Event.TRANSFER:
            payload = {
                "aps": {
                    "alert": {"title": self.transfer_title(push), "body": alert_body},
                    "sound": "default",
                    "mutable-content": 1,
                    "badge": push.badge,
                },
                "data": self.transfer_data(push, display_name_fallback=False),
            }
            return Notification(headers, payload)
        raise PushValidationError(f"sylk apps have no payload for event '{event.value}'", 400)

    # -- Firebase --

    def build_firebase(self, push: Push, now: float) -> Notification:
        """FCM HTTP v1 body for ``push``; ``now`` (wall clock) sets ``android.ttl``."""
        event = push.event
        if event.is_call:
            body = fcm_message(push, now, self.call_data(push, display_name_fallback=True))
        elif event is Event.CANCEL:
            body = fcm_message(push, now, self.cancel_data(push))
        elif event is Event.MESSAGE:
            body = fcm_message(
                push,
                now,
                self.message_data(push, display_name_fallback=True),
                apns={"headers": {"apns-priority": "5"}},
            )
        elif event is Event.TRANSFER:
            body = fcm_message(
                push,
                now,
                self.transfer_data(push, display_name_fallback=True),
                notification={"title": self.transfer_title(push), "body": f"From {push.from_uri}"},
                android={
                    "notification": {
                        "channel_id": "sylk-messages-sound",
                        "sound": "default",
                        "default_sound": True,
                        "notification_priority": "PRIORITY_HIGH",
                    }
                },
            )
        else:
            raise PushValidationError(f"sylk apps have no payload for event '{event.value}'", 400)
        return Notification({}, body)
