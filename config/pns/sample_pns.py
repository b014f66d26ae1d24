"""A sample push-service plugin: copy it into ``extra_pns_dir`` and adapt it.

How to write a push-service plugin
==================================

1. Put a ``.py`` file in the folder named by ``extra_pns_dir`` in general.ini
   (default ``pns/`` next to general.ini).  Every ``*.py`` there is imported
   at start-up; an import error stops the start with a message naming the file.
2. Define a subclass of :class:`sidecar.pns.base.PushService` with a unique
   ``platform`` name.  An application selects it in applications.ini with
   ``app_platform = <platform>``.  Options the sidecar does not know (here
   ``webhook_url``) are passed through, as strings, in ``app.extra``.
3. The sidecar constructs it as ``cls(app, nursery)``: ``app`` is the
   application's :class:`sidecar.config.AppConfig`, ``nursery`` a trio
   nursery for any background task the service needs.  Check the options in
   ``__init__`` and raise :class:`sidecar.pns.base.PushServiceConfigError`
   (naming the section and option) so a bad configuration fails at start-up.
4. Implement ``async def send(self, push, notification) -> SendResult``:
   make ONE attempt and classify the answer into a
   :class:`sidecar.pns.base.Verdict`:

   - ``DELIVERED``: done;
   - ``TOKEN_DEAD``: the device token will never work again (it is purged);
   - ``REJECTED``: this push cannot succeed, do not retry;
   - ``RETRY``: temporary trouble (429, 5xx, no connection); set
     ``retry_after`` when the server says how long to wait.

   Never raise for network or protocol trouble (return ``RETRY`` with
   status 0); only cancellation may propagate.  The dispatcher owns retries,
   backoff and the push's deadline (it cancels a send that outlives it).
   Never log or return secrets (keys, bearer tokens).
5. Optionally implement ``aclose()`` (close connections at shutdown or when
   the application's configuration changes) and ``statistics()``.
6. The payload comes from the application's app type: it must have a
   ``build_<platform>`` method (here ``build_webhook``), e.g. in an app-type
   plugin from ``extra_applications_dir``::

       def build_webhook(self, push, now):
           return Notification({}, {"event": push.event.value, "call-id": push.call_id,
                                    "from": push.from_uri})

This sample, ``app_platform = webhook``, POSTs every push as JSON to the URL
in the application's ``webhook_url`` option::

    [my-webhook-app]
    app_id = com.example.app
    app_type = my_app_type_with_build_webhook
    app_platform = webhook
    webhook_url = https://push.example.com/notify
    ; optional: seconds per attempt (default 5)
    webhook_timeout = 5
    ; optional, for a private CA: tls_ca_file = ca.pem

The body is ``{"app_id", "token", "event", "call_id", "headers", "payload"}``
(``payload`` and ``headers`` as the app type built them); the answer is
mapped 2xx -> DELIVERED, 404/410 -> TOKEN_DEAD, 429/5xx -> RETRY, anything
else -> REJECTED.  It is loaded by the test suite, so keep it working.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx
import trio

from sidecar.config import AppConfig
from sidecar.model import Push
from sidecar.pns.base import Notification, PushService, PushServiceConfigError, SendResult, Verdict


class WebhookPushService(PushService):
    """``app_platform = webhook``: one HTTP POST per push to ``webhook_url``."""

    platform = "webhook"

    def __init__(self, app: AppConfig, nursery: trio.Nursery):
        self._app = app
        self._url = str(app.extra.get("webhook_url", "")).strip()
        parts = urlsplit(self._url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PushServiceConfigError(
                f"[{app.section}] webhook_url: required, an http(s) URL (got {self._url!r})"
            )
        try:
            timeout = float(app.extra.get("webhook_timeout", 5))
            if not timeout > 0:
                raise ValueError
        except (TypeError, ValueError):
            raise PushServiceConfigError(
                f"[{app.section}] webhook_timeout: {app.extra.get('webhook_timeout')!r} is not a positive number"
            ) from None
        verify: ssl.SSLContext | bool = True
        if app.tls_ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(app.tls_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise PushServiceConfigError(f"[{app.section}] tls_ca_file {app.tls_ca_file}: {exc}") from None
        # One client per application: it keeps connections to the webhook open.
        self._client = httpx.AsyncClient(verify=verify, timeout=timeout)
        self.sent = 0

    async def send(self, push: Push, notification: Notification) -> SendResult:
        envelope = {
            "app_id": push.app_id,
            "token": push.token,
            "event": push.event.value,
            "call_id": push.call_id,
            "headers": dict(notification.headers),
            "payload": notification.payload,
        }
        try:
            body = json.dumps(envelope, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            return SendResult(Verdict.REJECTED, 0, f"payload is not JSON: {exc}", self._url)
        try:
            response = await self._client.post(
                self._url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:  # no answer: connect/read failure or timeout
            return SendResult(Verdict.RETRY, 0, f"{type(exc).__name__}: {exc}", self._url)
        self.sent += 1
        status = response.status_code
        verdict = classify_webhook(status)
        retry_after = _seconds(response.headers.get("retry-after")) if verdict is Verdict.RETRY else None
        return SendResult(verdict, status, response.reason_phrase or f"HTTP {status}", self._url,
                          retry_after=retry_after, body=_json_or_none(response))

    async def aclose(self) -> None:
        await self._client.aclose()

    def statistics(self) -> Mapping[str, Any]:
        return {"platform": self.platform, "app_id": self._app.app_id, "sent": self.sent}


def classify_webhook(status: int) -> Verdict:
    """2xx delivered, 404/410 dead token, 429/5xx retry, other rejected."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (404, 410):
        return Verdict.TOKEN_DEAD
    if status == 429 or status >= 500:
        return Verdict.RETRY
    return Verdict.REJECTED


def _seconds(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None  # an HTTP date: let the dispatcher's backoff decide


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        decoded = response.json()
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None
