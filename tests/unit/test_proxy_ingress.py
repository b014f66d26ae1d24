"""The ZeroMQ ingress's service side: WireMessage -> PushRequest -> one outcome, under a dispatch limit."""

from __future__ import annotations

import time

import pytest
import trio
import zmq
from fake_runtime import FakeRuntime, MemoryStore

from sidecar import wire
from sidecar.apps.linphone import LINPHONE_CANCEL
from sidecar.ingress.proxy import ProxyIngress, request_from_wire
from sidecar.ingress.zmq import serve_zmq
from sidecar.model import Event, OutcomeKind, PushRequest
from sidecar.store.base import DeviceRecord

CALL = {"event": "incoming_session", "call_id": "c1@host", "from_uri": "sip:alice@x", "to_uri": "sip:bob@x"}


def direct(call_id: str = "c1@host", *, event: str = "incoming_session", app_id: str = "com.ag.sylk",
           **extra: object) -> wire.WireMessage:
    extra.setdefault("media_type", None if event == "cancel" else "audio")
    return wire.decode(wire.encode_direct(event, call_id, "sip:alice@x", "sip:bob@x", app_id=app_id,
                                          platform="apple", token=f"tok-{call_id}", **extra))


# -- WireMessage -> PushRequest -------------------------------------------------------------------


def test_request_from_wire_copies_every_push_field():
    msg = wire.decode(wire.encode_direct(
        **CALL, pn_provider="apns.dev", pn_prid="A:remote&B:voip", pn_param="T.com.x.app.voip",
        display_name="Alice", media_type="audio", device_id="d1", silent=False, ttl=30,
        content="hi", content_type="text/plain", reason="r"))
    request = request_from_wire(msg)
    assert request == PushRequest(
        app_id="com.x.app", platform="apple", token="B", call_id="c1@host", from_uri="sip:alice@x",
        to_uri="sip:bob@x", event="incoming_session", device_id="d1", from_display_name="Alice",
        media_type="audio", reason="r", content="hi", content_type="text/plain", silent=False,
        ttl=30, sent_at=msg.sent_at, sandbox=True,
    )


def test_request_from_wire_of_an_account_message_has_no_device_and_no_conference_account():
    msg = wire.decode(wire.encode_account(**CALL, account="bob@x", media_type="audio"))
    request = request_from_wire(msg)
    assert (request.app_id, request.platform, request.token, request.account) == (None, None, None, None)
    assert request.silent is True  # the wire's default, which Sylk apps need


# -- one outcome per message ---------------------------------------------------------------------------


async def test_a_valid_message_is_dispatched_with_its_remaining_life():
    runtime = FakeRuntime()
    async with trio.open_nursery() as nursery:
        proxy = ProxyIngress(runtime, nursery, max_dispatches=4)
        proxy.endpoint = "ipc:///tmp/x.sock"
        msg = direct(ttl=30, sent_at=time.time() - 10)
        proxy.handle(msg)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    [push] = runtime.dispatched
    assert push.source == "zmq" and push.peer == "ipc:///tmp/x.sock" and push.token == "tok-c1@host"
    assert push.deadline - trio.current_time() == pytest.approx(20, abs=1)
    assert runtime.dropped == []


async def test_invalid_skipped_and_discarded_messages_each_end_once():
    runtime = FakeRuntime()
    async with trio.open_nursery() as nursery:
        proxy = ProxyIngress(runtime, nursery, max_dispatches=4)
        proxy.handle(direct("unknown", app_id="com.nobody"))
        proxy.handle(direct("lin", event="cancel", app_id="org.linphone"))
        proxy.discard(direct("old"), "expired")
        proxy.discard(direct("dup"), "duplicate")
        proxy.discard(direct("shed"), "overloaded")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert runtime.dispatched == []
    ends = {push.call_id: (kind, reason, app is not None) for push, app, reason, kind in runtime.dropped}
    assert ends == {
        "unknown": (OutcomeKind.REJECTED, "Apple com.nobody app is not configured", False),
        "lin": (OutcomeKind.SKIPPED, LINPHONE_CANCEL, False),  # not needed: skipped, not rejected
        "old": (OutcomeKind.EXPIRED, "older than its time to live", True),
        "dup": (OutcomeKind.DROPPED, "duplicate message", True),
        "shed": (OutcomeKind.DROPPED, "overloaded message", False),  # no application lookup when shedding
    }
    assert proxy.rejected == 1


async def test_dispatches_stay_under_the_limit_and_the_rest_is_shed_and_counted():
    """A slow push service: never more than max_dispatches at once; past the queue, shed at once."""
    runtime = FakeRuntime()
    runtime.gate = trio.Event()
    total = 40
    async with trio.open_nursery() as nursery:
        proxy = ProxyIngress(runtime, nursery, max_dispatches=3, queue_size=5)
        shed = 0
        for i in range(total):  # what the ZeroMQ reader does per frame
            if proxy.overloaded():
                shed += 1
                proxy.discard(direct(f"c{i}"), "overloaded")
            else:
                proxy.handle(direct(f"c{i}"))
            await trio.testing.wait_all_tasks_blocked()
        assert runtime.in_flight == 3
        runtime.gate.set()
        while runtime.finished < len(runtime.dispatched) or len(runtime.dispatched) < total - shed:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert runtime.max_in_flight == 3
    # 3 in flight + 1 held by the feeder + 5 queued got through; everything else was shed.
    assert len(runtime.dispatched) == 9 and shed == total - 9
    assert len(runtime.dropped) == shed and all(kind is OutcomeKind.DROPPED for *_, kind in runtime.dropped)
    assert runtime.finished == 9


async def test_the_zmq_reader_sheds_through_the_proxy_limit():
    """The real socket and reader: a burst beyond the queue is counted as shed, the rest dispatched."""
    runtime = FakeRuntime()
    runtime.gate = trio.Event()
    total = 60
    async with trio.open_nursery() as nursery:
        proxy = ProxyIngress(runtime, nursery, max_dispatches=2, queue_size=4)
        endpoint = await nursery.start(lambda task_status: serve_zmq(
            "tcp://127.0.0.1:*", proxy.handle, counters=proxy.counters, on_discard=proxy.discard,
            overloaded=proxy.overloaded, task_status=task_status))
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.connect(endpoint)
        for i in range(total):
            sock.send(wire.encode_direct("incoming_session", f"z{i}", "sip:a@x", "sip:b@x", app_id="com.ag.sylk",
                                         platform="apple", token=f"t{i}", media_type="audio"))
        with trio.fail_after(10):
            while proxy.counters.frames < total:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert runtime.in_flight <= 2
        runtime.gate.set()
        with trio.fail_after(10):
            while runtime.finished < proxy.counters.accepted:
                await trio.sleep(0.01)
        sock.close(linger=0)
        ctx.term()
        nursery.cancel_scope.cancel()
    counters = proxy.counters
    assert counters.shed > 0 and counters.accepted + counters.shed == total
    assert runtime.max_in_flight <= 2
    assert len(runtime.dispatched) == counters.accepted and len(runtime.dropped) == counters.shed


# -- account messages: the fan-out ------------------------------------------------------------------------


def device(device_id: str, app_id: str = "com.ag.sylk", **extra: object) -> DeviceRecord:
    return DeviceRecord(account="bob@x", app_id=app_id, device_id=device_id, platform="ios",
                        device_token=f"tok-{device_id}", **extra)  # type: ignore[arg-type]


async def run_account(store: MemoryStore, msg: wire.WireMessage) -> FakeRuntime:
    runtime = FakeRuntime(store)
    async with trio.open_nursery() as nursery:
        proxy = ProxyIngress(runtime, nursery, max_dispatches=4)
        proxy.handle(msg)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return runtime


async def test_account_message_reaches_every_stored_device_and_rejects_the_unknown_one():
    store = MemoryStore([device("d1"), device("d2", background_token="bg-d2"), device("d3", "com.gone")])
    msg = wire.decode(wire.encode_account("cancel", "c9", "sip:a@x", "sip:b@x", account="bob@x"))
    runtime = await run_account(store, msg)
    tokens = sorted(push.token for push in runtime.dispatched)
    assert tokens == ["bg-d2", "tok-d1"]  # a cancel goes to the background token when stored
    assert all(push.event is Event.CANCEL and push.source == "zmq" for push in runtime.dispatched)
    [(placeholder, app, reason, kind)] = runtime.dropped
    assert (placeholder.app_id, placeholder.device_id, kind) == ("com.gone", "d3", OutcomeKind.REJECTED)
    assert reason == "Apple com.gone app is not configured" and app is None


@pytest.mark.parametrize(("store", "kind", "reason"), [
    (MemoryStore([]), OutcomeKind.REJECTED, "account has no stored device"),
    (MemoryStore(down=True), OutcomeKind.FAILED, "token store unavailable: cassandra is down"),
])
async def test_account_message_without_devices_ends_once(store, kind, reason):
    msg = wire.decode(wire.encode_account(**CALL, account="bob@x", media_type="audio"))
    runtime = await run_account(store, msg)
    assert runtime.dispatched == []
    [(push, _, got_reason, got_kind)] = runtime.dropped
    assert (got_kind, got_reason, push.account) == (kind, reason, "bob@x")
