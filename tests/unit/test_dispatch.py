"""The dispatcher's policy around attempts: retries, backoff, Retry-After,
unknown fates, deadlines, overload, one outcome each.

All on trio's MockClock (the ``autojump_clock`` fixture): the times asserted
are virtual and exact, nothing waits on the wall clock.  The backoff's
jitter is pinned (0: the lower half of each step), so a retry's time is
known: ``0.2 * 2**(n-1) / 2`` seconds after the n-th failed attempt.
"""

from __future__ import annotations

import pytest
import trio

from sidecar.config import AppConfig
from sidecar.dispatch import Dispatcher
from sidecar.model import Event, Outcome, OutcomeKind, Push, PushValidationError
from sidecar.observe.metrics import Metrics
from sidecar.pns.base import ANSWER_GRACE, Notification, SendResult, Verdict

APP = AppConfig(section="a", app_id="com.example.app", app_type="sylk", platform="apple")

CUT = SendResult(Verdict.RETRY, 0, "ConnectionLost: cut", fate_unknown=True)
OK = SendResult(Verdict.DELIVERED, 200, "OK", url="https://apns/3/device/t")
BUSY = SendResult(Verdict.RETRY, 503, "ServiceUnavailable")
GONE = SendResult(Verdict.TOKEN_DEAD, 400, "BadDeviceToken")
BAD = SendResult(Verdict.REJECTED, 400, "BadTopic")
NOT_SENT = SendResult(Verdict.EXPIRED, 0, "NotSentInTime: no stream")
HANG = SendResult(Verdict.RETRY, 0, "(never answered: a service that ignores the deadline)")


def throttled(seconds: float) -> SendResult:
    return SendResult(Verdict.RETRY, 429, "TooManyRequests", retry_after=seconds)


class ScriptedServices:
    """The push services in force: one application, answering each attempt
    after ``answer_seconds`` with the next scripted result (the last repeats)."""

    def __init__(self, results: list[SendResult], answer_seconds: float = 0.1,
                 keys: frozenset[tuple[str, str]] = frozenset({APP.key})):
        self.results = list(results)
        self.answer_seconds = answer_seconds
        self.keys = keys
        self.sent_at: list[float] = []

    async def send(self, key: tuple[str, str], push: Push, notification: Notification) -> SendResult | None:
        if key not in self.keys:
            return None
        self.sent_at.append(trio.current_time())
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if result is HANG:
            await trio.sleep_forever()
        await trio.sleep(self.answer_seconds)
        return result


class AppTypeStub:
    def __init__(self, error: Exception | None = None):
        self.error = error

    def build(self, push: Push, platform: str, now: float) -> Notification:
        if self.error is not None:
            raise self.error
        return Notification(headers={}, payload={})


def make_push(deadline: float) -> Push:
    return Push(app_id=APP.app_id, platform="apple", token="t", event=Event.INCOMING_SESSION,
                call_id="c", from_uri="a", to_uri="b", deadline=deadline, expires_at=deadline)


class Run:
    def __init__(self, services: ScriptedServices, dispatcher: Dispatcher, outcome: Outcome, started: float):
        self.services = services
        self.dispatcher = dispatcher
        self.outcome = outcome
        self.metrics = dispatcher.metrics
        self.elapsed = trio.current_time() - started
        # attempt times relative to the push's start
        self.times = [round(at - started, 6) for at in services.sent_at]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


async def run(results: list[SendResult], life: float = 30.0, answer_seconds: float = 0.1,
              app_type: AppTypeStub | None = None, **kwargs: object) -> Run:
    services = ScriptedServices(results, answer_seconds, **kwargs)  # type: ignore[arg-type]
    dispatcher = Dispatcher(services, metrics=Metrics(), jitter=lambda: 0.0)
    started = trio.current_time()
    outcome = await dispatcher.dispatch(make_push(started + life), APP, app_type or AppTypeStub())
    return Run(services, dispatcher, outcome, started)


# --- final answers -----------------------------------------------------------

async def test_a_delivered_push_is_one_attempt(autojump_clock):
    r = await run([OK])
    assert (r.outcome.kind, r.outcome.code, r.outcome.attempts, r.outcome.url) == (
        OutcomeKind.DELIVERED, 200, 1, OK.url)
    assert r.times == [0.0]
    assert r.dispatcher.counts[OutcomeKind.DELIVERED] == 1 and r.dispatcher.in_flight == 0


async def test_a_dead_token_is_reported_410_and_not_retried(autojump_clock):
    r = await run([GONE, OK])
    assert (r.outcome.kind, r.outcome.code, r.outcome.attempts) == (OutcomeKind.TOKEN_DEAD, 410, 1)
    assert r.times == [0.0]


async def test_a_rejection_is_final(autojump_clock):
    r = await run([BAD, OK])
    assert (r.outcome.kind, r.outcome.code, r.outcome.reason) == (OutcomeKind.REJECTED, 400, "BadTopic")
    assert len(r.times) == 1


# --- retries and backoff ------------------------------------------------------

async def test_retries_back_off_exponentially(autojump_clock):
    r = await run([BUSY, BUSY, BUSY, OK])
    # Each answer takes 0.1 s, then 0.1, 0.2, 0.4 s of backoff (the lower half of 0.2, 0.4, 0.8).
    assert r.times == pytest.approx([0.0, 0.2, 0.5, 1.0])
    assert (r.outcome.kind, r.outcome.attempts) == (OutcomeKind.DELIVERED, 4)
    assert r.sample("pushsidecar_resent_unknown_total", platform="apple") is None


async def test_retry_after_is_honoured_when_longer_than_the_backoff(autojump_clock):
    r = await run([throttled(7.0), throttled(0.01), OK])
    # 7 s as asked; then the backoff (0.2 s) wins over a shorter Retry-After.
    assert r.times == pytest.approx([0.0, 7.1, 7.4])
    assert (r.outcome.kind, r.outcome.attempts) == (OutcomeKind.DELIVERED, 3)


async def test_no_retry_when_retry_after_passes_the_deadline(autojump_clock):
    r = await run([throttled(60.0), OK], life=30.0)
    assert r.times == [0.0]  # not resent after the deadline, and not waited for either
    assert (r.outcome.kind, r.outcome.code, r.outcome.attempts) == (OutcomeKind.FAILED, 429, 1)
    assert "after the deadline" in r.outcome.reason
    assert r.elapsed == pytest.approx(0.1)


async def test_retries_stop_before_the_deadline(autojump_clock):
    r = await run([BUSY], life=2.0)
    # 0, 0.2, 0.5, 1.0 (then 1.1 + 0.8 = 1.9 < 2) 1.9; the next would be at 2.0 + 1.6: given up.
    assert r.times == pytest.approx([0.0, 0.2, 0.5, 1.0, 1.9])
    assert (r.outcome.kind, r.outcome.code, r.outcome.attempts) == (OutcomeKind.FAILED, 503, 5)
    assert all(t < 2.0 for t in r.times)


# --- unknown fates ------------------------------------------------------------

async def test_an_unknown_fate_is_resent_once(autojump_clock):
    r = await run([CUT, OK])
    assert (r.outcome.kind, len(r.times)) == (OutcomeKind.DELIVERED, 2)
    assert r.sample("pushsidecar_resent_unknown_total", platform="apple") == 1


async def test_a_second_unknown_fate_is_not_resent(autojump_clock):
    r = await run([CUT, CUT, OK])
    assert (r.outcome.kind, len(r.times)) == (OutcomeKind.FAILED, 2)
    assert "fate unknown twice" in r.outcome.reason
    assert r.sample("pushsidecar_resent_unknown_total", platform="apple") == 1


async def test_ordinary_retries_are_not_limited_to_one(autojump_clock):
    r = await run([BUSY, CUT, BUSY, OK])
    assert (r.outcome.kind, len(r.times)) == (OutcomeKind.DELIVERED, 4)


# --- deadlines ----------------------------------------------------------------

async def test_not_sent_by_the_deadline_is_expired_and_no_attempt(autojump_clock):
    r = await run([NOT_SENT])
    assert (r.outcome.kind, r.outcome.code, r.outcome.attempts) == (OutcomeKind.EXPIRED, 504, 0)


async def test_an_answer_on_its_way_is_awaited_past_the_deadline(autojump_clock):
    r = await run([OK], life=1.0, answer_seconds=1.0 + ANSWER_GRACE)
    assert r.outcome.kind is OutcomeKind.DELIVERED  # a delivered push is never reported expired


async def test_a_service_ignoring_the_deadline_is_cut_at_the_hard_cap(autojump_clock):
    r = await run([HANG], life=1.0)
    # Cut at the deadline + ANSWER_GRACE + 1 s, not when the service chose to answer.
    assert r.elapsed == pytest.approx(1.0 + ANSWER_GRACE + 1.0)
    assert (r.outcome.kind, r.outcome.code) == (OutcomeKind.EXPIRED, 504)


async def test_a_retry_cut_at_the_hard_cap_fails_with_its_attempts(autojump_clock):
    r = await run([BUSY, HANG], life=1.0)
    assert r.times == pytest.approx([0.0, 0.2])
    assert (r.outcome.kind, r.outcome.code, r.outcome.attempts) == (OutcomeKind.FAILED, 503, 2)
    assert "deadline passed after 2 attempt(s)" in r.outcome.reason
    assert r.elapsed == pytest.approx(1.0 + ANSWER_GRACE + 1.0)


# --- what never reaches a service ---------------------------------------------

async def test_a_removed_application_is_rejected_404_and_nothing_sent(autojump_clock):
    r = await run([OK], keys=frozenset())
    assert (r.outcome.kind, r.outcome.code, r.outcome.attempts) == (OutcomeKind.REJECTED, 404, 0)
    assert r.outcome.reason == (
        "Apple com.example.app app is not configured (removed by a configuration reload)")
    assert r.times == [] and r.dispatcher.counts[OutcomeKind.REJECTED] == 1


async def test_a_payload_the_app_type_refuses_is_rejected_without_an_attempt(autojump_clock):
    r = await run([OK], app_type=AppTypeStub(PushValidationError("too big", 413)))
    assert (r.outcome.kind, r.outcome.code, r.outcome.reason) == (OutcomeKind.REJECTED, 413, "too big")
    assert r.times == []


async def test_a_bug_in_an_app_type_is_contained_as_failed(autojump_clock):
    r = await run([OK], app_type=AppTypeStub(KeyError("oops")))
    assert (r.outcome.kind, r.outcome.code) == (OutcomeKind.FAILED, 500)
    assert "KeyError" in r.outcome.reason and r.dispatcher.in_flight == 0


async def test_above_max_in_flight_new_pushes_are_dropped_at_once(autojump_clock):
    services = ScriptedServices([OK], answer_seconds=1.0)
    dispatcher = Dispatcher(services, metrics=Metrics(), max_in_flight=2, jitter=lambda: 0.0)
    outcomes: list[Outcome] = []

    async def one() -> None:
        outcomes.append(await dispatcher.dispatch(make_push(trio.current_time() + 30), APP, AppTypeStub()))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert [o.kind for o in outcomes] == [OutcomeKind.DROPPED, OutcomeKind.DELIVERED, OutcomeKind.DELIVERED]
    assert outcomes[0].code == 503 and len(services.sent_at) == 2
    assert dispatcher.received == 3 and sum(dispatcher.counts.values()) == 3


async def test_every_push_ends_in_exactly_one_counted_outcome(autojump_clock):
    services = ScriptedServices([OK, BUSY, OK, GONE, BAD, CUT, CUT, NOT_SENT], answer_seconds=0.1)
    dispatcher = Dispatcher(services, metrics=Metrics(), jitter=lambda: 0.0)
    seen: list[OutcomeKind] = []
    dispatcher.listeners.append(lambda push, app, note, outcome: seen.append(outcome.kind))
    for _ in range(6):
        await dispatcher.dispatch(make_push(trio.current_time() + 30), APP, AppTypeStub())
    dispatcher.drop(make_push(trio.current_time()), APP, "expired in the queue", OutcomeKind.EXPIRED)
    assert dispatcher.received == 7 == len(seen) == sum(dispatcher.counts.values())
    assert seen == [OutcomeKind.DELIVERED, OutcomeKind.DELIVERED, OutcomeKind.TOKEN_DEAD,
                    OutcomeKind.REJECTED, OutcomeKind.FAILED, OutcomeKind.EXPIRED, OutcomeKind.EXPIRED]
