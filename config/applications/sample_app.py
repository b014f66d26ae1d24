"""A sample app type plugin: copy it into ``extra_applications_dir`` and adapt it.

How to write an app type plugin
===============================

1. Put a ``.py`` file in the folder named by ``extra_applications_dir`` in
   general.ini (default ``applications/`` next to general.ini).  Every file
   whose name does not start with ``_`` is loaded at start-up and on reload;
   an import error stops the load with a message naming the file.
2. Define a subclass of :class:`sidecar.apps.base.AppType` with a unique
   ``name``.  An application selects it in applications.ini with
   ``app_type = <name>``.  Reusing a built-in name (``sylk``, ``linphone``)
   is an error.
3. Write one ``build_<platform>(self, push, now)`` method per platform you
   support (``build_apple``, ``build_firebase``, or a plugin platform's
   name).  It receives a :class:`sidecar.model.Push` and ``now``, the
   wall-clock UNIX time, and returns a :class:`sidecar.pns.base.Notification`:
   ``headers`` (for APNs: apns-topic, apns-push-type, apns-priority,
   apns-expiration) and ``payload`` (for APNs the JSON body; for FCM the
   whole ``{"message": {...}}``).  Build methods must be pure: no I/O, no
   sleeping; the dispatcher sends, retries and reports.
4. Optionally override ``check_request(self, request)`` to add rules to the
   incoming :class:`sidecar.model.PushRequest` (attributes such as
   ``event``, ``to_uri``, ``silent``; None when not given).  Raise
   :class:`sidecar.model.PushValidationError` (status 400 or 404; name the
   Sylk JSON key in the message) to refuse a request; return it (possibly
   completed with ``dataclasses.replace``) otherwise.

Helpers from :mod:`sidecar.apps.sylk` (``apns_headers``, ``topic_base``,
``voip_topic``, ``fcm_message``) keep the headers and FCM rules (all data
values strings, ttl from the push's remaining life) right.

This sample sends a plain alert for every event.  It is loaded by the test
suite, so keep it working.
"""

from __future__ import annotations

from sidecar.apps.base import AppType
from sidecar.apps.sylk import apns_headers, fcm_message, topic_base
from sidecar.model import Push, PushRequest, PushValidationError
from sidecar.pns.base import Notification


class SampleAppType(AppType):
    """``app_type = sample``: one visible alert per push, on Apple and Firebase."""

    name = "sample"

    def check_request(self, request: PushRequest) -> PushRequest:
        # This app cannot show anything without knowing who is calling.
        if not request.from_uri:
            raise PushValidationError("Field 'from' required", 400)
        return request

    def build_apple(self, push: Push, now: float) -> Notification:
        headers = apns_headers(push, topic=topic_base(push.app_id), push_type="alert", priority=10)
        payload = {
            "aps": {
                "alert": {"title": self._title(push), "body": push.from_uri},
                "sound": "default",
            },
            "call-id": push.call_id,
        }
        return Notification(headers, payload)

    def build_firebase(self, push: Push, now: float) -> Notification:
        data = {"event": push.event.value, "call-id": push.call_id, "from": push.from_uri}
        notification = {"title": self._title(push), "body": push.from_uri}
        return Notification({}, fcm_message(push, now, data, notification=notification))

    @staticmethod
    def _title(push: Push) -> str:
        return push.from_display_name or "Incoming " + push.event.value.replace("_", " ")
