"""The dispatcher's policy around attempts: unknown fates and deadlines (virtual time)."""

from __future__ import annotations

import trio

from sidecar.config import AppConfig
from sidecar.dispatch import Dispatcher
from sidecar.model import Event, OutcomeKind, Push
from sidecar.observe.metrics import Metrics
from sidecar.pns.base import Notification, PushService, SendResult, Verdict

APP = AppConfig(section="a", app_id="com.example.app", app_type="sylk", platform="apple")


class ScriptedService(PushService):
    platform = "apple"

    def __init__(self, results: list[SendResult]):
        self.results = list(results)
        self.sends = 0

    async def send(self, push: Push, notification: Notification) -> SendResult:
        self.sends += 1
        await trio.sleep(0.1)
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


class Services:
    def __init__(self, service: PushService):
        self.service = service

    def service_for(self, app: AppConfig) -> PushService:
        return self.service


class AppTypeStub:
    def build(self, push: Push, platform: str, now: float) -> Notification:
        return Notification(headers={}, payload={})


def push(deadline: float) -> Push:
    return Push(app_id=APP.app_id, platform="apple", token="t", event=Event.INCOMING_SESSION,
                call_id="c", from_uri="a", to_uri="b", deadline=deadline, expires_at=deadline)


CUT = SendResult(Verdict.RETRY, 0, "ConnectionLost: cut", fate_unknown=True)
OK = SendResult(Verdict.DELIVERED, 200, "OK")


async def run(results: list[SendResult], life: float = 30.0):
    service = ScriptedService(results)
    metrics = Metrics()
    dispatcher = Dispatcher(Services(service), metrics=metrics)
    outcome = await dispatcher.dispatch(push(trio.current_time() + life), APP, AppTypeStub())
    resent = metrics.registry.get_sample_value("pushsidecar_resent_unknown_total", {"platform": "apple"})
    return outcome, service.sends, resent


async def test_an_unknown_fate_is_resent_once(autojump_clock):
    outcome, sends, resent = await run([CUT, OK])
    assert (outcome.kind, sends, resent) == (OutcomeKind.DELIVERED, 2, 1)


async def test_a_second_unknown_fate_is_not_resent(autojump_clock):
    outcome, sends, resent = await run([CUT, CUT, OK])
    assert (outcome.kind, sends, resent) == (OutcomeKind.FAILED, 2, 1)
    assert "fate unknown twice" in outcome.reason


async def test_ordinary_retries_are_not_limited_to_one(autojump_clock):
    busy = SendResult(Verdict.RETRY, 503, "ServiceUnavailable")
    outcome, sends, resent = await run([busy, busy, busy, OK])
    assert (outcome.kind, sends, resent) == (OutcomeKind.DELIVERED, 4, None)


async def test_not_sent_by_the_deadline_is_expired_and_no_attempt(autojump_clock):
    outcome, sends, _ = await run([SendResult(Verdict.EXPIRED, 0, "NotSentInTime: no stream")])
    assert (outcome.kind, outcome.code, outcome.attempts) == (OutcomeKind.EXPIRED, 504, 0)
