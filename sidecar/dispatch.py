"""Push -> Outcome: the one place that decides how a push is sent.

Theory of operation: the ingress hands over a validated :class:`Push` with
its application and app type.  The app type builds the notification (pure),
the push service makes one attempt at a time and classifies the answer, and
this module owns everything around the attempts: the deadline (nothing is
sent after ``push.deadline``, but an answer already on its way is awaited up
to ANSWER_GRACE past it: a delivered push is never reported expired), retries
with backoff honouring Retry-After, at most one resend of a push whose fate a
cut connection left unknown, the overload limit, and the single final
:class:`Outcome` that is logged and counted.  "Nothing lost" is checkable:
pushes in == outcomes out, per kind.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

import trio

from .apps.base import AppType
from .config import AppConfig
from .model import Outcome, OutcomeKind, Push, PushValidationError
from .observe.log import log_attempt, log_outcome, log_received
from .observe.metrics import Metrics
from .pns.backoff import backoff_delay
from .pns.base import SEND_CAP_AFTER_DEADLINE, Notification, SendResult, Verdict

logger = logging.getLogger("sidecar.dispatch")


class PushServiceSet(Protocol):
    """The push services in force, by application key (:class:`~sidecar.pns.registry.PushServices`)."""

    async def send(self, key: tuple[str, str], push: Push, notification: Notification) -> SendResult | None:
        """One attempt on the service of application ``key``; None: no such
        application (a reload removed it), nothing was sent."""
        ...


class OutcomeListener(Protocol):
    def __call__(
        self, push: Push, app: AppConfig | None, notification: Notification | None, outcome: Outcome
    ) -> None: ...


class Dispatcher:
    """Sends pushes through the push services and reports one outcome each.

    Args:
      services: the push services in force, looked up by application key at
        each attempt (a reload may have replaced or removed one).
      max_in_flight: above this many pushes in progress, new ones are
        ``dropped`` at once (overload protection; the proxy will not wait).
      wall_clock: UNIX time source (injectable for tests).
      jitter: the backoff's random source, in [0, 1) (injectable for tests).
      listeners: called with every final outcome (metrics, remote logging).
    """

    def __init__(
        self,
        services: PushServiceSet,
        *,
        max_in_flight: int = 20000,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        listeners: list[OutcomeListener] | None = None,
        metrics: Metrics | None = None,
    ):
        self._services = services
        self._max_in_flight = max_in_flight
        self._wall_clock = wall_clock
        self._jitter = jitter
        self.listeners: list[OutcomeListener] = list(listeners or [])
        self.metrics = metrics or Metrics()
        self.in_flight = 0
        self.counts: dict[OutcomeKind, int] = {kind: 0 for kind in OutcomeKind}
        self.received = 0
        self.received_from: dict[str, int] = {}  # per push source (zmq, http...), both doors

    def is_full(self, pending: int = 0) -> bool:
        """True if new pushes would be dropped, counting ``pending`` ones handed
        over but not started yet (the ZeroMQ reader sheds at once then)."""
        return self.in_flight + pending >= self._max_in_flight

    async def dispatch(self, push: Push, app: AppConfig, app_type: AppType) -> Outcome:
        """Send ``push`` and return its one outcome.  Never raises (but Cancelled)."""
        self.received += 1
        self.received_from[push.source] = self.received_from.get(push.source, 0) + 1
        self.metrics.push_received(push.source)
        log_received(push)
        started = trio.current_time()
        notification: Notification | None = None
        if self.in_flight >= self._max_in_flight:
            outcome = Outcome(OutcomeKind.DROPPED, 503, "overloaded: too many pushes in flight")
            return self._finish(push, app, None, outcome)
        self.in_flight += 1
        try:
            try:
                notification = app_type.build(push, app.platform, self._wall_clock())
            except PushValidationError as exc:
                outcome = Outcome(OutcomeKind.REJECTED, exc.status, exc.message)
            else:
                outcome = await self._send_until_done(push, app, notification)
        except Exception as exc:  # a bug in an app type or a plugin: contain it
            logger.exception("push %s failed unexpectedly", push.request_id)
            outcome = Outcome(OutcomeKind.FAILED, 500, f"internal error: {type(exc).__name__}")
        finally:
            self.in_flight -= 1
        return self._finish(push, app, notification, outcome, trio.current_time() - started)

    def drop(self, push: Push, app: AppConfig | None, reason: str,
             kind: OutcomeKind = OutcomeKind.DROPPED) -> Outcome:
        """Record the outcome of a push that never reached :meth:`dispatch`
        (expired in a queue, duplicate...)."""
        self.received += 1
        self.received_from[push.source] = self.received_from.get(push.source, 0) + 1
        self.metrics.push_received(push.source)
        return self._finish(push, app, None, Outcome(kind, _DROP_CODES.get(kind, 503), reason))

    async def _send_until_done(
        self, push: Push, app: AppConfig, notification: Notification
    ) -> Outcome:
        """Attempts until a final answer, the deadline or a second unknown fate.

        Deadlines don't lie: the deadline stops what has not been sent (the
        HTTP/2 services get it as ``send_by`` and wait up to ANSWER_GRACE for
        the answer of a request already on the wire).  The cancel scope here
        is only the hard cap, SEND_CAP_AFTER_DEADLINE after the deadline, for
        services (plugins) that ignore it.

        Each attempt goes to the service in force for the application's key,
        not the one of the configuration snapshot the push was read with: a
        retry after a reload uses the new credentials.  If a reload removed
        the application, the push is rejected (404, as an unknown application
        at the ingress) and nothing more is sent.
        """
        attempts = 0
        unknown_resends = 0
        last: SendResult | None = None
        if logger.isEnabledFor(logging.DEBUG):  # debug = true: what we send (secrets are redacted)
            logger.debug("event=request call_id=%s request_id=%s headers=%s body=%s",
                         push.call_id, push.request_id, json.dumps(dict(notification.headers)),
                         json.dumps(notification.payload, separators=(",", ":")))
        with trio.move_on_at(push.deadline + SEND_CAP_AFTER_DEADLINE):
            while trio.current_time() < push.deadline:
                attempts += 1
                sent_at = trio.current_time()
                result = await self._services.send(app.key, push, notification)
                if result is None:  # nothing was sent
                    return _not_configured(app, attempts - 1)
                if result.verdict is Verdict.EXPIRED:  # nothing was sent
                    attempts -= 1
                    break
                last = result
                if last.body is not None and logger.isEnabledFor(logging.DEBUG):
                    logger.debug("event=response call_id=%s request_id=%s status=%d body=%s",
                                 push.call_id, push.request_id, last.status,
                                 json.dumps(last.body, separators=(",", ":"), default=str))
                seconds = trio.current_time() - sent_at
                self.metrics.attempt(push.platform, last.status, seconds,
                                     retry=last.verdict is Verdict.RETRY)
                log_attempt(push, attempts, last.url, last.status, last.reason,
                            seconds=seconds, verdict=last.verdict.value)
                if last.verdict is not Verdict.RETRY:
                    return _final_outcome(last, attempts)
                if last.fate_unknown:
                    # The connection was cut after the request left and no answer
                    # could be read: it may have been delivered.  One resend at most.
                    if unknown_resends >= 1:
                        return self._gave_up(last, attempts, "fate unknown twice; not resent again")
                    unknown_resends += 1
                    self.metrics.resent_unknown(push.platform)
                    logger.warning("event=resent_unknown call_id=%s request_id=%s attempt=%d reason=%s",
                                   push.call_id, push.request_id, attempts, last.reason)
                delay = backoff_delay(attempts, last.retry_after, rng=self._jitter)
                if trio.current_time() + delay >= push.deadline:
                    return self._gave_up(last, attempts, "no retry: the next one would be after the deadline")
                await trio.sleep(delay)
        # The deadline passed (or the hard cap).
        if attempts == 0 or last is None:
            return Outcome(OutcomeKind.EXPIRED, 504, "deadline passed before it could be sent")
        return Outcome(
            OutcomeKind.FAILED if last.verdict is Verdict.RETRY else OutcomeKind.EXPIRED,
            last.status or 504,
            f"deadline passed after {attempts} attempt(s); last: {last.reason}",
            url=last.url,
            attempts=attempts,
            body=last.body,
        )

    @staticmethod
    def _gave_up(last: SendResult, attempts: int, why: str) -> Outcome:
        return Outcome(OutcomeKind.FAILED, last.status or 502, f"{last.reason} ({why})",
                       url=last.url, attempts=attempts, body=last.body)

    def _finish(
        self, push: Push, app: AppConfig | None, notification: Notification | None,
        outcome: Outcome, seconds: float | None = None,
    ) -> Outcome:
        self.counts[outcome.kind] += 1
        self.metrics.outcome(push.app_id, push.platform, outcome.kind, seconds)
        log_outcome(push, outcome)
        for listener in self.listeners:
            try:
                listener(push, app, notification, outcome)
            except Exception:
                logger.exception("outcome listener %r failed", listener)
        return outcome


_DROP_CODES = {OutcomeKind.EXPIRED: 504, OutcomeKind.REJECTED: 400, OutcomeKind.SKIPPED: 204}

_VERDICT_TO_KIND = {
    Verdict.DELIVERED: OutcomeKind.DELIVERED,
    Verdict.TOKEN_DEAD: OutcomeKind.TOKEN_DEAD,
    Verdict.REJECTED: OutcomeKind.REJECTED,
}


def _not_configured(app: AppConfig, attempts: int) -> Outcome:
    after = f" after {attempts} attempt(s)" if attempts else ""
    return Outcome(OutcomeKind.REJECTED, 404,
                   f"{app.platform.capitalize()} {app.app_id} app is not configured "
                   f"(removed by a configuration reload{after})", attempts=attempts)


def _final_outcome(result: SendResult, attempts: int) -> Outcome:
    kind = _VERDICT_TO_KIND[result.verdict]
    # Dead tokens are reported as 410 whatever the service said (Sylk contract).
    code = 410 if kind is OutcomeKind.TOKEN_DEAD else (result.status or 400)
    return Outcome(kind, code, result.reason, url=result.url, attempts=attempts, body=result.body)
