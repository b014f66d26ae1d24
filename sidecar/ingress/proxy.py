"""ZeroMQ messages from the proxy scripts -> pushes.

The ZeroMQ reader (``ingress/zmq.py``) hands each valid, fresh, new message
to :meth:`ProxyIngress.handle`, which must not block: it starts one task per
message in its nursery.  Every message ends in exactly one logged outcome:
a dispatched push's own, or ``rejected`` (invalid for the configuration),
``skipped`` (not needed by the application: a cancel for a Linphone app),
``expired`` (older than its time to live) or ``dropped`` (duplicate, or an
account with no stored device).
"""

from __future__ import annotations

import time

import trio

from ..model import Event, OutcomeKind, Push, PushNotNeeded, PushValidationError, new_request_id
from ..store.base import StoreUnavailable
from ..wire import WireMessage, to_sylk_fields
from .fields import build_push
from .zmq import ZmqIngressCounters, remaining_ttl


class ProxyIngress:
    def __init__(self, runtime, nursery: trio.Nursery):
        self._runtime = runtime
        self._nursery = nursery
        self.counters = ZmqIngressCounters()
        self.rejected = 0
        self.endpoint: str | None = None  # the bound endpoint: peer= in the log lines

    def handle(self, msg: WireMessage) -> None:
        ttl = remaining_ttl(msg, time.time())
        if msg.is_account:
            self._nursery.start_soon(self._push_account, msg, ttl)
            return
        try:
            push, app, app_type = self._build(msg, ttl)
        except PushNotNeeded as exc:
            self._runtime.dispatcher.drop(self._placeholder(msg), None, exc.why, kind=OutcomeKind.SKIPPED)
            return
        except PushValidationError as exc:
            self._reject(msg, exc)
            return
        self._nursery.start_soon(self._runtime.dispatch, push, app, app_type)

    def discard(self, msg: WireMessage, why: str) -> None:
        """A message the reader will not deliver: record its one outcome."""
        kind = OutcomeKind.EXPIRED if why == "expired" else OutcomeKind.DROPPED
        reason = "older than its time to live" if why == "expired" else f"{why} message"
        if why == "overloaded":
            # Shedding must cost less than delivering: no application lookup,
            # the push as the proxy sent it (still logged and counted).
            push, app = self._placeholder(msg), None
        else:
            try:
                push, app, _ = self._build(msg, 0.0)
            except PushValidationError:
                push, app = self._placeholder(msg), None
        self._runtime.dispatcher.drop(push, app, reason, kind=kind)

    def _build(self, msg: WireMessage, ttl: float):
        runtime = self._runtime
        push, app, app_type = build_push(
            to_sylk_fields(msg), settings=runtime.settings, app_types=runtime.app_types,
            source="zmq", now=trio.current_time(), wall_now=time.time(), ttl=ttl,
            peer=self.endpoint,
        )
        if msg.sandbox:  # a development build: APNs's sandbox (Sylk's fields have no such key)
            push = push.replace(sandbox=True)
        return push, app, app_type

    def _reject(self, msg: WireMessage, exc: PushValidationError) -> None:
        self.rejected += 1
        self._runtime.dispatcher.drop(
            self._placeholder(msg), None, exc.message, kind=OutcomeKind.REJECTED
        )

    def _placeholder(self, msg: WireMessage) -> Push:
        """A Push carrying what the message said, for the log line of its outcome."""
        return Push(
            app_id=msg.app_id or "-", platform=msg.platform or "-", token=msg.token or "-",
            event=Event(msg.event), call_id=msg.call_id, from_uri=msg.from_uri,
            to_uri=msg.to_uri, deadline=trio.current_time(), expires_at=time.time(),
            account=msg.account, source="zmq", request_id=new_request_id(),
        )

    async def _push_account(self, msg: WireMessage, ttl: float) -> None:
        from ..fanout import push_to_devices

        runtime = self._runtime
        try:
            devices = await runtime.store.devices(msg.account)
        except StoreUnavailable as exc:
            runtime.dispatcher.drop(self._placeholder(msg), None, f"token store unavailable: {exc}",
                                    kind=OutcomeKind.FAILED)
            return
        if not devices:
            runtime.dispatcher.drop(self._placeholder(msg), None, "account has no stored device",
                                    kind=OutcomeKind.REJECTED)
            return
        results = await push_to_devices(
            runtime, msg.account, devices, to_sylk_fields(msg), source="zmq", ttl=ttl,
            peer=self.endpoint,
        )
        for result in results:
            if result.error is not None:  # never dispatched: record its outcome here
                placeholder = self._placeholder(msg).replace(
                    app_id=result.device.app_id, platform=result.device.platform,
                    device_id=result.device.device_id)
                runtime.dispatcher.drop(placeholder, None, result.error.message,
                                        kind=OutcomeKind.REJECTED)
