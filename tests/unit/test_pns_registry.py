"""The push-service registry across reloads, driven through the real dispatcher (virtual time).

The services are fakes that take a scripted time to answer and fail their
in-flight sends when closed, as the HTTP/2 services do.  A reload is
``PushServices.apply``, as the daemon does it.
"""

from __future__ import annotations

import dataclasses

import pytest
import trio

from sidecar.config import AppConfig
from sidecar.dispatch import Dispatcher
from sidecar.model import Event, OutcomeKind, Push
from sidecar.observe.metrics import Metrics
from sidecar.pns.base import (
    SEND_CAP_AFTER_DEADLINE, Notification, PushService, PushServiceConfigError, SendResult, Verdict,
)
from sidecar.pns.registry import PushServices

APP = AppConfig(section="sylk-ios", app_id="com.example.app", app_type="sylk", platform="apple",
                key_id="OLDKEY", team_id="TEAM")
OTHER = AppConfig(section="other-ios", app_id="com.example.other", app_type="sylk", platform="apple",
                  key_id="OTHERKEY", team_id="TEAM")
NEW_KEY = dataclasses.replace(APP, key_id="NEWKEY")

OK = SendResult(Verdict.DELIVERED, 200, "OK")
BUSY = SendResult(Verdict.RETRY, 503, "ServiceUnavailable")


class FakeService(PushService):
    """Answers each send after ``seconds`` with the next scripted result; closing
    it fails the sends in flight (fate unknown), as a closed HTTP/2 connection does."""

    platform = "apple"

    def __init__(self, app: AppConfig, script: list[tuple[float, SendResult]]):
        self.app = app
        self.script = script
        self.sends: list[float] = []
        self.closed_at: float | None = None
        self._closed = trio.Event()

    async def send(self, push: Push, notification: Notification) -> SendResult:
        self.sends.append(trio.current_time())
        if self.closed_at is not None:
            return SendResult(Verdict.RETRY, 0, "ConnectError: closed")
        seconds, result = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        with trio.move_on_after(seconds):
            await self._closed.wait()
            return SendResult(Verdict.RETRY, 0, "ConnectionLost: closed locally", fate_unknown=True)
        return result

    async def aclose(self) -> None:
        if self.closed_at is None:
            self.closed_at = trio.current_time()
        self._closed.set()


class Factory:
    """Builds FakeServices, the script chosen by the application's key_id."""

    def __init__(self, scripts: dict[str, list[tuple[float, SendResult]]]):
        self.scripts = scripts
        self.built: list[tuple[AppConfig, FakeService]] = []

    def __call__(self, app: AppConfig, nursery: trio.Nursery) -> PushService:
        if app.key_id == "BROKEN":
            raise PushServiceConfigError(f"[{app.section}] unusable key")
        service = FakeService(app, list(self.scripts.get(app.key_id or "", [(0.1, OK)])))
        self.built.append((app, service))
        return service

    def services_of(self, app: AppConfig) -> list[FakeService]:
        return [service for built, service in self.built if built == app]


class AppTypeStub:
    def build(self, push: Push, platform: str, now: float) -> Notification:
        return Notification(headers={}, payload={})


def make_push(app: AppConfig, call_id: str = "call-1", life: float = 45.0) -> Push:
    deadline = trio.current_time() + life
    return Push(app_id=app.app_id, platform=app.platform, token="token", event=Event.INCOMING_SESSION,
                call_id=call_id, from_uri="alice", to_uri="bob", deadline=deadline, expires_at=deadline)


def apps(*configs: AppConfig) -> dict[tuple[str, str], AppConfig]:
    return {app.key: app for app in configs}


async def dispatch_after(dispatcher: Dispatcher, delay: float, app: AppConfig, results: list) -> None:
    await trio.sleep(delay)
    results.append(await dispatcher.dispatch(make_push(app), app, AppTypeStub()))


async def test_a_push_retrying_across_a_reload_goes_to_the_new_service(nursery, autojump_clock):
    factory = Factory({"OLDKEY": [(1.0, BUSY)], "NEWKEY": [(0.1, OK)]})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    dispatcher = Dispatcher(services, metrics=Metrics())
    outcomes: list = []
    async with trio.open_nursery() as pushes:
        # The push read the old snapshot (APP); the reload lands during its first attempt.
        pushes.start_soon(dispatch_after, dispatcher, 0, APP, outcomes)
        await trio.sleep(0.5)
        services.apply(apps(NEW_KEY))
    [outcome] = outcomes
    assert (outcome.kind, outcome.attempts) == (OutcomeKind.DELIVERED, 2)
    [old] = factory.services_of(APP)
    [new] = factory.services_of(NEW_KEY)
    # The old configuration built one service, before the reload, and never again.
    assert len(factory.built) == 2
    assert len(old.sends) == 1 and len(new.sends) == 1
    assert new.closed_at is None
    assert old.closed_at is not None
    # A push that still holds the old snapshot goes to the new service too, and flips nothing.
    await dispatch_after(dispatcher, 0, APP, outcomes)
    assert outcomes[-1].kind is OutcomeKind.DELIVERED
    assert len(new.sends) == 2 and len(factory.built) == 2 and new.closed_at is None
    await services.aclose()


async def test_a_removed_application_is_retired_and_never_recreated(nursery, autojump_clock):
    factory = Factory({"OTHERKEY": [(1.0, BUSY)]})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP, OTHER))
    dispatcher = Dispatcher(services, metrics=Metrics())
    outcomes: list = []
    async with trio.open_nursery() as pushes:
        pushes.start_soon(dispatch_after, dispatcher, 0, OTHER, outcomes)
        await trio.sleep(0.5)
        services.apply(apps(APP))  # OTHER removed while its push waits for an answer
    [outcome] = outcomes
    assert outcome.kind is OutcomeKind.REJECTED and outcome.code == 404
    assert "not configured" in outcome.reason
    [other] = factory.services_of(OTHER)
    assert len(other.sends) == 1  # the retry was not sent on a service of a removed application
    assert other.closed_at is not None and other.closed_at < 1.1
    assert len(factory.built) == 2
    assert set(services.statistics()) == {APP.key}
    await services.aclose()


async def test_a_changed_key_drains_the_old_service_then_closes_it(nursery, autojump_clock):
    factory = Factory({"OLDKEY": [(20.0, OK)], "NEWKEY": [(0.1, OK)]})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    dispatcher = Dispatcher(services, metrics=Metrics())
    outcomes: list = []
    async with trio.open_nursery() as pushes:
        pushes.start_soon(dispatch_after, dispatcher, 0, APP, outcomes)  # answered at t=20
        await trio.sleep(1)
        services.apply(apps(NEW_KEY))
        pushes.start_soon(dispatch_after, dispatcher, 0, APP, outcomes)  # the new key, at once
    await trio.sleep(0.05)  # the drain task closes the old service once it sees the last send end
    late, early = outcomes[1], outcomes[0]
    assert (early.kind, early.attempts) == (OutcomeKind.DELIVERED, 1)
    assert (late.kind, late.attempts) == (OutcomeKind.DELIVERED, 1)
    [old] = factory.services_of(APP)
    [new] = factory.services_of(NEW_KEY)
    assert len(old.sends) == 1 and len(new.sends) == 1
    # Closed once its last send ended (t=20), not after a fixed pause nor while it was in flight.
    assert old.closed_at is not None and 20.0 <= old.closed_at < 20.1
    assert new.closed_at is None
    await services.aclose()


async def test_an_idle_retired_service_is_closed_at_once(nursery, autojump_clock):
    factory = Factory({})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    await trio.sleep(1)
    services.apply(apps(NEW_KEY))
    await trio.sleep(0.1)
    [old] = factory.services_of(APP)
    assert old.closed_at is not None and 1.0 <= old.closed_at < 1.1
    await services.aclose()


async def test_a_changed_application_key_retires_the_old_key(nursery, autojump_clock):
    renamed = dataclasses.replace(APP, app_id="com.example.renamed")
    factory = Factory({})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    services.apply(apps(renamed))
    await trio.sleep(0.1)
    dispatcher = Dispatcher(services, metrics=Metrics())
    old_key = await dispatcher.dispatch(make_push(APP), APP, AppTypeStub())
    new_key = await dispatcher.dispatch(make_push(renamed), renamed, AppTypeStub())
    assert old_key.kind is OutcomeKind.REJECTED and old_key.code == 404
    assert new_key.kind is OutcomeKind.DELIVERED
    [old] = factory.services_of(APP)
    [new] = factory.services_of(renamed)
    assert old.closed_at is not None and new.closed_at is None and len(factory.built) == 2
    assert set(services.statistics()) == {renamed.key}
    await services.aclose()


async def test_a_failed_build_changes_nothing(nursery, autojump_clock):
    broken = dataclasses.replace(OTHER, key_id="BROKEN")
    factory = Factory({})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    problems = services.apply(apps(NEW_KEY, broken))
    assert [(app.section, message) for app, message in problems] == [
        ("other-ios", "[other-ios] unusable key")]
    await trio.sleep(0.1)
    [old] = factory.services_of(APP)
    [unused] = factory.services_of(NEW_KEY)
    assert old.closed_at is None  # still in force
    assert unused.closed_at is not None  # built for the rejected reload, then closed
    dispatcher = Dispatcher(services, metrics=Metrics())
    outcome = await dispatcher.dispatch(make_push(NEW_KEY), NEW_KEY, AppTypeStub())
    assert outcome.kind is OutcomeKind.DELIVERED and len(old.sends) == 1
    await services.aclose()


async def test_changed_credential_files_rebuild_an_unchanged_application(nursery, tmp_path, autojump_clock):
    key_file = tmp_path / "AuthKey.p8"
    app = dataclasses.replace(APP, apple_key=key_file)
    factory = Factory({})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(app, OTHER))
    services.apply(apps(app, OTHER))  # nothing changed: nothing built
    assert len(factory.built) == 2
    services.apply(apps(app, OTHER), changed_files=frozenset({key_file}))
    await trio.sleep(0.1)
    first, second = factory.services_of(app)
    assert first.closed_at is not None and second.closed_at is None
    assert len(factory.services_of(OTHER)) == 1
    await services.aclose()


async def test_a_retired_service_is_closed_at_the_hard_cap_if_a_send_never_ends(nursery, autojump_clock):
    # A plugin that ignores the deadline, sent to without the dispatcher's own cap:
    # the drain still ends, at the push's deadline plus SEND_CAP_AFTER_DEADLINE.
    factory = Factory({"OLDKEY": [(10_000.0, OK)]})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    results: list = []

    async def send() -> None:
        results.append(await services.send(APP.key, make_push(APP, life=10.0), Notification({}, {})))

    nursery.start_soon(send)
    await trio.sleep(1)
    services.apply(apps(NEW_KEY))
    await trio.sleep(60)
    [old] = factory.services_of(APP)
    assert old.closed_at == pytest.approx(10.0 + SEND_CAP_AFTER_DEADLINE)
    [result] = results  # failed by the close, as a closed HTTP/2 connection fails its streams
    assert result.verdict is Verdict.RETRY and result.fate_unknown
    await services.aclose()


async def test_stopping_closes_draining_services_at_once(nursery, autojump_clock):
    factory = Factory({"OLDKEY": [(20.0, OK)]})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    nursery.start_soon(services.send, APP.key, make_push(APP), Notification({}, {}))
    await trio.sleep(1)
    services.apply(apps(NEW_KEY))
    await trio.sleep(1)
    [old] = factory.services_of(APP)
    assert old.closed_at is None  # draining: its send is still in flight
    await services.aclose()
    [new] = factory.services_of(NEW_KEY)
    assert old.closed_at == pytest.approx(2.0) and new.closed_at == pytest.approx(2.0)
    assert services.statistics() == {}


async def test_a_push_for_an_unknown_key_sends_nothing(nursery, autojump_clock):
    factory = Factory({})
    services = PushServices(nursery, {"apple": factory})
    services.apply(apps(APP))
    assert await services.send(OTHER.key, make_push(OTHER), Notification({}, {})) is None
    [service] = factory.services_of(APP)
    assert service.sends == [] and len(factory.built) == 1
    await services.aclose()


async def test_an_unknown_platform_is_a_problem_not_a_crash(nursery, autojump_clock):
    services = PushServices(nursery, {"apple": Factory({})})
    huawei = dataclasses.replace(OTHER, platform="huawei")
    assert services.apply(apps(APP, huawei)) == [(huawei, "no push service for platform 'huawei'")]
    assert services.statistics() == {}  # all or nothing
    await services.aclose()
