"""The ``linphone`` app type: call pushes for Linphone (Belledonne) clients.

Linphone apps only know incoming calls: a missing event means
``incoming_session`` and any other event is refused (404, as Sylk did); a
proxy's ``cancel`` ends as ``skipped`` (see ``LINPHONE_CANCEL``).
Apple pushes are always VoIP pushes; ``loc-args`` is an array, as Apple's
format requires (the original sent a bare string).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..model import Event, Push, PushNotNeeded, PushRequest, PushValidationError
from ..pns.base import Notification
from .base import AppType
from .sylk import apns_headers, fcm_message, voip_topic

#: the ``pn_ttl`` Linphone clients expect in Apple payloads (30 days, a constant)
LINPHONE_PN_TTL = 2592000

#: Why a proxy's cancel for a Linphone app is skipped.  Linphone reads no cancel
#: in a push: a second VoIP push for the call is ignored while it rings, and
#: shows as a failed call once it ended.  It ends a call whose INVITE never
#: came by itself (liblinphone's push_incoming_call_timeout, 15 s on iOS; the
#: Android wake-up service stops after 20 s), as it does with Flexisip.
LINPHONE_CANCEL = ("linphone apps read no cancel push: the app ends a call whose INVITE "
                   "never came by itself (about 15 s)")


def send_time(now: float) -> str:
    """Local time ``YYYY-MM-DD HH:MM:SS``, as Linphone clients expect."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))


class LinphoneAppType(AppType):
    """Payload rules of ``app_type = linphone``."""

    name = "linphone"

    def check_request(self, request: PushRequest) -> PushRequest:
        """Default the event to ``incoming_session``; refuse every other event (404)."""
        event = request.event
        if event is None:
            return dataclasses.replace(request, event=Event.INCOMING_SESSION.value)
        if event != Event.INCOMING_SESSION.value:
            message = (f"Event '{event}' is not supported by linphone applications "
                       f"(only '{Event.INCOMING_SESSION.value}')")
            if event == Event.CANCEL.value:
                raise PushNotNeeded(message, 404, why=LINPHONE_CANCEL)
            raise PushValidationError(message, 404)
        return request

    def build_apple(self, push: Push, now: float) -> Notification:
        """VoIP push; silent or alerting depending on ``push.silent``."""
        headers = apns_headers(push, topic=voip_topic(push.app_id), push_type="voip", priority=10)
        sent_at = send_time(now)
        if push.silent:
            payload: dict[str, Any] = {
                "aps": {
                    "sound": "",
                    "loc-key": "IC_SIL",
                    "call-id": push.call_id,
                    "send-time": sent_at,
                },
                "from-uri": push.from_uri,
                "pn_ttl": LINPHONE_PN_TTL,
            }
        else:
            payload = {
                "aps": {
                    "alert": {"loc-key": "IC_MSG", "loc-args": [push.from_uri]},
                    "sound": "msg.caf",
                    "badge": 1,
                },
                "pn_ttl": LINPHONE_PN_TTL,
                "call-id": push.call_id,
                "send-time": sent_at,
            }
        return Notification(headers, payload)

    def build_firebase(self, push: Push, now: float) -> Notification:
        """FCM HTTP v1 data message; ``android.ttl`` is the push's remaining life."""
        data = {
            "call-id": push.call_id,
            "sip-from": push.from_uri,
            "loc-key": "",
            "loc-args": push.from_uri,
            "send-time": send_time(now),
        }
        return Notification({}, fcm_message(push, now, data))
