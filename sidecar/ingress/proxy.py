"""ZeroMQ messages from the proxy scripts -> pushes, dispatched under a limit.

The ZeroMQ reader (``ingress/zmq.py``) hands each valid, fresh, new message
to :meth:`ProxyIngress.handle`, which must not block: it turns the message
into a :class:`~sidecar.model.PushRequest` (no dict in between), admits it
(:mod:`sidecar.admission`) and queues the dispatch on a bounded channel.  One
feeder task starts the queued dispatches, at most ``max_dispatches`` at a
time (a :class:`trio.CapacityLimiter`); while the queue is full,
:meth:`overloaded` is true and the reader sheds new messages at once
(``discard(msg, "overloaded")``), so neither tasks nor queued pushes grow
without bound.  An account message takes one slot for its whole fan-out.

Every message ends in exactly one logged outcome: a dispatched push's own,
or ``rejected`` (invalid for the configuration), ``skipped`` (not needed by
the application: a cancel for a Linphone app), ``expired`` (older than its
time to live) or ``dropped`` (duplicate, overloaded, or an account with no
stored device).
"""

from __future__ import annotations

import dataclasses
import operator
import time
from functools import partial
from collections.abc import Awaitable, Callable

import trio

from ..admission import admit
from ..apps.base import AppType
from ..config import AppConfig
from ..fanout import push_to_devices
from ..model import Event, OutcomeKind, Push, PushNotNeeded, PushRequest, PushValidationError, new_request_id
from ..runtime_api import IngressRuntime
from ..store.base import StoreUnavailable
from ..wire import WireMessage
from .zmq import ZmqIngressCounters

#: Set by :func:`request_from_wire` itself.  ``account``: on the wire the
#: account pushed to, in a request Sylk's conference account (never sent).
_NOT_COPIED = frozenset({"account", "silent", "sandbox", "from_display_name"})
#: PushRequest fields copied from the WireMessage field of the same name.
_SAME_NAME = tuple(
    f.name for f in dataclasses.fields(PushRequest) if f.name in WireMessage._fields and f.name not in _NOT_COPIED
)
_same_name_values = operator.attrgetter(*_SAME_NAME)

Job = Callable[[], Awaitable[object]]


def request_from_wire(msg: WireMessage) -> PushRequest:
    """The push request a decoded message carries (``silent`` defaults to true on the wire)."""
    return PushRequest(
        **dict(zip(_SAME_NAME, _same_name_values(msg), strict=True)),
        from_display_name=msg.display_name,
        silent=True if msg.silent is None else msg.silent,
        sandbox=msg.sandbox,
    )


class ProxyIngress:
    """The service side of the ZeroMQ reader: admission, bounded dispatch, counted ends.

    Args:
        runtime: the running daemon.
        nursery: where the feeder and the dispatch tasks run.
        max_dispatches: most messages being dispatched at once.
        queue_size: most admitted messages waiting for a slot; beyond,
            :meth:`overloaded` is true.
    """

    def __init__(self, runtime: IngressRuntime, nursery: trio.Nursery, *, max_dispatches: int,
                 queue_size: int = 1000) -> None:  # fmt: skip
        self._runtime = runtime
        self._nursery = nursery
        self.counters = ZmqIngressCounters()
        self.rejected = 0
        self.endpoint: str | None = None  # the bound endpoint: peer= in the log lines
        self.limiter = trio.CapacityLimiter(max_dispatches)
        self._queue_size = queue_size
        self._jobs, jobs = trio.open_memory_channel[Job](queue_size)
        nursery.start_soon(self._feed, jobs)

    def overloaded(self) -> bool:
        """True while the queue of admitted messages is full (shed new ones)."""
        return self._jobs.statistics().current_buffer_used >= self._queue_size

    def handle(self, msg: WireMessage) -> None:
        if msg.is_account:
            self._queue(msg, partial(self._push_account, msg))
            return
        try:
            push, app, app_type = self._admit(msg)
        except PushNotNeeded as exc:
            self._runtime.drop(self._placeholder(msg), None, exc.why, kind=OutcomeKind.SKIPPED)
            return
        except PushValidationError as exc:
            self._reject(msg, exc)
            return
        self._queue(msg, partial(self._runtime.dispatch, push, app, app_type))

    def discard(self, msg: WireMessage, why: str) -> None:
        """A message the reader will not deliver: record its one outcome."""
        kind = OutcomeKind.EXPIRED if why == "expired" else OutcomeKind.DROPPED
        reason = "older than its time to live" if why == "expired" else f"{why} message"
        app: AppConfig | None = None
        if why == "overloaded":
            # Shedding must cost less than delivering: no application lookup,
            # the push as the proxy sent it (still logged and counted).
            push = self._placeholder(msg)
        else:
            try:
                push, app, _ = self._admit(msg)
            except PushValidationError:
                push = self._placeholder(msg)
        self._runtime.drop(push, app, reason, kind=kind)

    def _queue(self, msg: WireMessage, job: Job) -> None:
        try:
            self._jobs.send_nowait(job)
        except trio.WouldBlock:  # only when called past overloaded(): the reader checks first
            self.discard(msg, "overloaded")

    async def _feed(self, jobs: trio.MemoryReceiveChannel[Job]) -> None:
        async for job in jobs:
            slot = object()
            await self.limiter.acquire_on_behalf_of(slot)
            self._nursery.start_soon(self._run, job, slot)

    async def _run(self, job: Job, slot: object) -> None:
        try:
            await job()
        finally:
            self.limiter.release_on_behalf_of(slot)

    def _admit(self, msg: WireMessage) -> tuple[Push, AppConfig, AppType]:
        runtime = self._runtime
        return admit(
            request_from_wire(msg), settings=runtime.settings, app_types=runtime.app_types,
            source="zmq", now=trio.current_time(), wall_now=time.time(), peer=self.endpoint,
        )

    def _reject(self, msg: WireMessage, exc: PushValidationError) -> None:
        self.rejected += 1
        self._runtime.drop(self._placeholder(msg), None, exc.message, kind=OutcomeKind.REJECTED)

    def _placeholder(self, msg: WireMessage) -> Push:
        """A Push carrying what the message said, for the log line of its outcome."""
        return Push(
            app_id=msg.app_id or "-", platform=msg.platform or "-", token=msg.token or "-",
            event=Event(msg.event), call_id=msg.call_id, from_uri=msg.from_uri,
            to_uri=msg.to_uri, deadline=trio.current_time(), expires_at=time.time(),
            account=msg.account, source="zmq", request_id=new_request_id(),
        )

    async def _push_account(self, msg: WireMessage) -> None:
        runtime = self._runtime
        assert msg.account is not None
        try:
            devices = await runtime.store.devices(msg.account)
        except StoreUnavailable as exc:
            runtime.drop(self._placeholder(msg), None, f"token store unavailable: {exc}",
                         kind=OutcomeKind.FAILED)
            return
        if not devices:
            runtime.drop(self._placeholder(msg), None, "account has no stored device",
                         kind=OutcomeKind.REJECTED)
            return
        results = await push_to_devices(
            runtime, msg.account, devices, request_from_wire(msg), source="zmq", peer=self.endpoint,
        )
        for result in results:
            if result.error is not None:  # never dispatched: record its outcome here
                placeholder = self._placeholder(msg).replace(
                    app_id=result.device.app_id, platform=result.device.platform,
                    device_id=result.device.device_id)
                runtime.drop(placeholder, None, result.error.message, kind=OutcomeKind.REJECTED)
