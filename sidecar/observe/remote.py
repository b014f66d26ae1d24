"""Remote logging: after each push, POST what happened to the application's URLs.

Theory of operation: the dispatcher calls :meth:`RemoteLogger.submit` (or the
logger itself, as an outcome listener) for every finished push.  ``submit``
never waits: it puts the raw pieces in a bounded trio memory channel and
returns; when the channel is full the entry is dropped and counted, so a slow
or dead remote never delays a push.  :meth:`RemoteLogger.run`, a task in the
service's nursery, takes entries out, builds the JSON (Sylk's shape)::

    {"request": {"body": <incoming request>, "headers": <outgoing headers>,
                 "payload": <outgoing body>},
     "response": {"code": ..., "description": ..., "push_url": ...},
     "call_id": ..., "request_id": ..., "app_id": ..., "platform": ..., "outcome": ...}

and posts it to every URL in ``log_remote_urls`` (a few posts at a time, each
within ``log_remote_timeout`` seconds).  If ``log_remote_key`` is set, the
value of that key in the remote's JSON answer is logged.

Secrets never leave: authorization-like headers are removed, and every string
of the document goes through the same redaction as the log lines (JWTs,
bearer values, OAuth tokens, PEM keys, registered secrets).  Device tokens
are not credentials and are kept, as Sylk did.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from typing import Any
from collections.abc import Mapping

import httpx
import trio

from ..config import AppConfig
from ..model import Outcome, Push
from ..pns.base import Notification
from .log import push_logger, redact
from .metrics import Metrics

logger = logging.getLogger("sidecar.remote")

#: headers that carry credentials: never forwarded
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})

DEFAULT_CAPACITY = 1000
DEFAULT_CONCURRENCY = 8
#: the ``queue`` label of this logger's queue in ``pushsidecar_queue_depth``
QUEUE_NAME = "remote_log"
#: at most one warning per URL this often, however many posts fail
WARNING_INTERVAL = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteLogEntry:
    """What :meth:`RemoteLogger.submit` queues: raw references, no work done yet."""

    urls: tuple[str, ...]
    key: str | None
    timeout: float
    push: Push
    headers: Mapping[str, Any] | None
    payload: Mapping[str, Any] | None
    outcome: Outcome
    incoming: Mapping[str, Any] | None


def incoming_body(push: Push) -> dict[str, Any]:
    """The push as a Sylk v1 request body (hyphenated keys, unset ones left out)."""
    body: dict[str, Any] = {
        "app-id": push.app_id,
        "platform": push.platform,
        "token": push.token,
        "device-id": push.device_id,
        "call-id": push.call_id,
        "event": push.event.value,
        "from": push.from_uri,
        "from-display-name": push.from_display_name,
        "to": push.to_uri,
        "media-type": push.media_type,
        "silent": push.silent,
        "reason": push.reason,
        "badge": push.badge,
        "filename": push.filename,
        "filetype": push.filetype,
        "account": push.account,
        "content": push.content,
        "content-type": push.content_type,
    }
    return {key: value for key, value in body.items() if value is not None}


def scrub(value: Any) -> Any:
    """A JSON-ready deep copy of ``value`` with every secret masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {
            str(key): scrub(item)
            for key, item in value.items()
            if str(key).lower() not in SECRET_HEADERS
        }
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return redact(str(value))


def build_document(entry: RemoteLogEntry) -> dict[str, Any]:
    """The JSON document posted for ``entry`` (secrets removed)."""
    push, outcome = entry.push, entry.outcome
    incoming = entry.incoming if entry.incoming is not None else incoming_body(push)
    return {
        "request": {
            "body": scrub(incoming),
            "headers": scrub(entry.headers or {}),
            "payload": scrub(entry.payload or {}),
        },
        "response": {
            "code": outcome.code,
            "description": redact(outcome.reason),
            "push_url": redact(outcome.url),
        },
        "call_id": push.call_id,
        "request_id": push.request_id,
        "app_id": push.app_id,
        "platform": push.platform,
        "device_id": push.device_id,
        "outcome": outcome.kind.value,
        "attempts": outcome.attempts,
    }


_USERINFO = re.compile(r"//[^/@\s]*@")


def display_url(url: str) -> str:
    """``url`` without user:password, for log lines."""
    return _USERINFO.sub("//***@", url)


class RemoteLogger:
    """Posts a record of each push to the application's remote log URLs.

    Args:
      metrics: counts posts sent, failed and dropped (optional).
      capacity: entries that may wait; beyond that they are dropped.
      concurrency: posts in progress at once.
      transport: an httpx async transport (tests); default: a normal one.
    """

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        capacity: int = DEFAULT_CAPACITY,
        concurrency: int = DEFAULT_CONCURRENCY,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._metrics = metrics
        self._send, self._receive = trio.open_memory_channel[RemoteLogEntry](capacity)
        self._concurrency = concurrency
        self._transport = transport
        self._last_warning: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.dropped = 0
        self.sent = 0
        self.failed = 0

    # -- the push side (synchronous, never waits) ---------------------------------

    def submit(
        self,
        app: AppConfig | None,
        push: Push,
        notification: Notification | None,
        outcome: Outcome,
        *,
        incoming: Mapping[str, Any] | None = None,
    ) -> bool:
        """Queue a record of ``push`` for the application's URLs.

        Do not mutate ``notification`` or ``incoming`` afterwards: they are
        read later, by the worker.

        Returns:
          False if the entry was dropped (queue full or worker stopped); True
          if queued or if the application has no remote log URLs.
        """
        if app is None or not app.log_remote_urls:
            return True
        entry = RemoteLogEntry(
            urls=tuple(app.log_remote_urls),
            key=app.log_remote_key or None,
            timeout=app.log_remote_timeout,
            push=push,
            headers=notification.headers if notification else None,
            payload=notification.payload if notification else None,
            outcome=outcome,
            incoming=incoming,
        )
        try:
            self._send.send_nowait(entry)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += len(entry.urls)
            if self._metrics:
                for _ in entry.urls:
                    self._metrics.remote_log("dropped")
            return False
        if self._metrics:
            self._metrics.queue_added(QUEUE_NAME)
        return True

    def __call__(
        self, push: Push, app: AppConfig | None, notification: Notification | None, outcome: Outcome
    ) -> None:
        """The dispatcher's outcome-listener signature."""
        self.submit(app, push, notification, outcome)

    def statistics(self) -> dict[str, int]:
        stats = self._receive.statistics()
        return {
            "queued": stats.current_buffer_used,
            "capacity": int(stats.max_buffer_size),
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
        }

    # -- the worker -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Post queued entries until cancelled.  Start with ``nursery.start``."""
        slots = trio.Semaphore(self._concurrency)
        async with httpx.AsyncClient(transport=self._transport, follow_redirects=False) as client:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for entry in self._receive:
                    if self._metrics:
                        self._metrics.queue_taken(QUEUE_NAME)
                    try:
                        document = json.dumps(build_document(entry), default=str).encode()
                    except Exception:  # never let one odd entry stop remote logging
                        logger.exception("cannot encode a remote log entry")
                        continue
                    for url in entry.urls:
                        await slots.acquire()
                        nursery.start_soon(self._post, client, slots, url, document, entry)

    async def _post(
        self, client: httpx.AsyncClient, slots: trio.Semaphore, url: str, document: bytes, entry: RemoteLogEntry
    ) -> None:
        try:
            answer: httpx.Response | None = None
            with trio.move_on_after(entry.timeout):
                answer = await client.post(
                    url,
                    content=document,
                    headers={"content-type": "application/json"},
                    timeout=entry.timeout,
                )
            if answer is None:
                self._failed(url, f"no answer within {entry.timeout:g}s")
            elif answer.status_code >= 300:
                self._failed(url, f"HTTP {answer.status_code}")
            else:
                self.sent += 1
                if self._metrics:
                    self._metrics.remote_log("sent")
                if entry.key:
                    self._log_key(entry, url, answer)
        except Exception as exc:  # httpx errors, but also a malformed URL in the config
            self._failed(url, f"{type(exc).__name__}: {exc}")
        finally:
            slots.release()

    def _log_key(self, entry: RemoteLogEntry, url: str, answer: httpx.Response) -> None:
        try:
            value = answer.json().get(entry.key)
        except (ValueError, AttributeError):
            value = None
        push_logger(entry.push, logger).info(
            "remote log %s: %s=%s", display_url(url), entry.key, json.dumps(value, default=str)
        )

    def _failed(self, url: str, why: str) -> None:
        self.failed += 1
        if self._metrics:
            self._metrics.remote_log("failed")
        # A dead remote fails every post: say so once a minute, with the count.
        now = trio.current_time()
        last = self._last_warning.get(url)
        if last is not None and now - last < WARNING_INTERVAL:
            self._suppressed[url] = self._suppressed.get(url, 0) + 1
            return
        self._last_warning[url] = now
        more = self._suppressed.pop(url, 0)
        suffix = f" ({more} more failures since the last warning)" if more else ""
        logger.warning("remote log to %s failed: %s%s", display_url(url), redact(why), suffix)
