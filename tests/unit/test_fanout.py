"""Account fan-out: one request per stored device (dataclasses.replace), sent at once, dead tokens purged."""

from __future__ import annotations

import pytest
import trio
from fake_runtime import FakeRuntime, MemoryStore

from sidecar.fanout import device_request, push_to_devices
from sidecar.model import Event, OutcomeKind, PushRequest
from sidecar.store.base import DeviceRecord

REQUEST = PushRequest(call_id="c1", from_uri="sip:alice@x", to_uri="sip:bob@x", event="incoming_session",
                      media_type="audio", silent=True, from_display_name="Alice")


def device(device_id: str, *, app_id: str = "com.ag.sylk", platform: str = "ios",
           background: str | None = None, silent: bool = True) -> DeviceRecord:
    return DeviceRecord(account="bob@x", app_id=app_id, device_id=device_id, platform=platform,
                        device_token=f"tok-{device_id}", background_token=background, silent=silent)


def test_device_request_takes_the_device_values_and_keeps_the_rest():
    derived = device_request(REQUEST, device("d1", platform="android", silent=False))
    assert (derived.app_id, derived.platform, derived.token, derived.device_id, derived.silent) == (
        "com.ag.sylk", "android", "tok-d1", "d1", False)
    assert (derived.call_id, derived.from_display_name, derived.media_type) == ("c1", "Alice", "audio")
    assert REQUEST.token is None  # the account's request is untouched (frozen)


@pytest.mark.parametrize(("event", "token"), [
    ("incoming_session", "tok-d1"), ("incoming_conference_request", "tok-d1"),
    ("cancel", "bg"), ("message", "bg"), ("transfer", "tok-d1"),
])
def test_background_token_only_for_cancel_and_message(event, token):
    derived = device_request(PushRequest(event=event), device("d1", background="bg"))
    assert derived.token == token


def test_without_background_token_the_device_token_is_used():
    assert device_request(PushRequest(event="cancel"), device("d1")).token == "tok-d1"


async def test_every_device_is_sent_at_once_and_dead_tokens_are_removed():
    store = MemoryStore([device("d1"), device("d2", platform="android"), device("dead")])
    runtime = FakeRuntime(store, outcome_for={"tok-dead": OutcomeKind.TOKEN_DEAD})
    runtime.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        results: list = []

        async def run() -> None:
            results.extend(await push_to_devices(runtime, "bob@x", list(store.records), REQUEST,
                                                 source="http-v2", peer="127.0.0.1:5"))

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        assert runtime.in_flight == 3  # concurrently, not one after the other
        runtime.gate.set()
    assert [r.outcome.kind for r in results] == [OutcomeKind.DELIVERED, OutcomeKind.DELIVERED,
                                                 OutcomeKind.TOKEN_DEAD]
    assert [r.token_removed for r in results] == [False, False, True]
    assert store.removed == [("bob@x", "com.ag.sylk", "dead")]
    assert [r.device_id for r in store.records] == ["d1", "d2"]
    pushes = {p.device_id: p for p in runtime.dispatched}
    assert pushes["d2"].platform == "firebase" and pushes["d1"].platform == "apple"
    assert all(p.source == "http-v2" and p.peer == "127.0.0.1:5" and p.event is Event.INCOMING_SESSION
               for p in pushes.values())


async def test_a_device_that_cannot_be_admitted_is_reported_not_sent():
    runtime = FakeRuntime(MemoryStore())
    results = await push_to_devices(runtime, "bob@x", [device("d1"), device("x", app_id="com.gone")],
                                    REQUEST, source="zmq")
    assert [p.device_id for p in runtime.dispatched] == ["d1"]
    bad = results[1]
    assert bad.push is None and bad.outcome is None and bad.error is not None
    assert (bad.error.status, bad.error.message) == (404, "Apple com.gone app is not configured")


async def test_a_store_failure_after_sending_keeps_the_results():
    store = MemoryStore([device("dead")], remove_fails=True)
    runtime = FakeRuntime(store, outcome_for={"tok-dead": OutcomeKind.TOKEN_DEAD})
    [result] = await push_to_devices(runtime, "bob@x", list(store.records), REQUEST, source="zmq")
    assert result.outcome is not None and result.outcome.kind is OutcomeKind.TOKEN_DEAD
    assert result.token_removed is False and result.token_remove_error == "store went away"
