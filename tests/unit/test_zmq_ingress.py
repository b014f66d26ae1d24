"""The ZeroMQ PULL ingress under trio, with real sockets (tcp on 127.0.0.1 and ipc in tmp_path)."""

from __future__ import annotations

import os
import stat
import threading
import time

import trio
import zmq

from sidecar import wire
from sidecar.ingress.zmq import (
    RecentKeys,
    ZmqIngressCounters,
    serve_zmq,
)

NOW = 1_000_000.0


def frame(call_id: str, *, event: str = "incoming_session", token: str = "tok", sent_at: float = NOW,
          ttl: int | None = None) -> bytes:
    return wire.encode_direct(event, call_id, "sip:a@x", "sip:b@x", app_id="com.x", platform="apple",
                              token=token, sent_at=sent_at, ttl=ttl)


class Collector:
    def __init__(self, expected: int) -> None:
        self.messages: list[wire.WireMessage] = []
        self.discarded: list[tuple[str, str]] = []
        self.expected = expected
        self.done = trio.Event()

    def __call__(self, msg: wire.WireMessage) -> None:
        self.messages.append(msg)
        self._check()

    def discard(self, msg: wire.WireMessage, reason: str) -> None:
        self.discarded.append((msg.call_id, reason))
        self._check()

    def _check(self) -> None:
        if len(self.messages) + len(self.discarded) >= self.expected:
            self.done.set()


def send_all_in_thread(endpoint: str, frames: list[bytes]) -> threading.Thread:
    """A plain blocking PUSH sender in a thread, like a proxy worker."""

    def run() -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(endpoint)
        for f in frames:
            sock.send(f)
        sock.close()
        ctx.term()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def run_ingress(nursery, collector, counters, endpoint="tcp://127.0.0.1:*", **kwargs):
    return await nursery.start(
        lambda task_status: serve_zmq(endpoint, collector, counters=counters,
                                      on_discard=collector.discard, wall_clock=lambda: NOW + 1,
                                      task_status=task_status, **kwargs)
    )


async def test_ten_thousand_messages_reach_the_handler():
    collector = Collector(10_000)
    counters = ZmqIngressCounters()
    async with trio.open_nursery() as nursery:
        bound = await run_ingress(nursery, collector, counters)
        assert bound.startswith("tcp://127.0.0.1:") and not bound.endswith("*")
        thread = send_all_in_thread(bound, [frame(f"call-{i}") for i in range(10_000)])
        with trio.fail_after(20):
            await collector.done.wait()
        nursery.cancel_scope.cancel()
    thread.join(5)
    assert [m.call_id for m in collector.messages] == [f"call-{i}" for i in range(10_000)]
    assert counters.snapshot() == {"frames": 10_000, "accepted": 10_000, "bad": 0, "expired": 0,
                                   "duplicates": 0, "shed": 0, "handler_errors": 0, "clients_refused": 0}


async def test_reader_does_not_starve_other_tasks():
    """A flood must not hold the event loop: another task keeps ticking while it drains."""
    ticks = 0
    ticks_at: list[int] = []

    def handler(msg):
        ticks_at.append(ticks)

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    counters = ZmqIngressCounters()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(lambda task_status: serve_zmq(
            "tcp://127.0.0.1:*", handler, counters=counters, wall_clock=lambda: NOW,
            task_status=task_status))
        nursery.start_soon(ticker)
        await trio.sleep(0.01)
        thread = send_all_in_thread(bound, [frame(f"c{i}") for i in range(20_000)])
        # Block the whole event loop on purpose so the frames pile up in the
        # socket: the reader then finds all of them in one wake-up.
        thread.join(10)
        time.sleep(0.3)
        with trio.fail_after(20):
            while counters.frames < 20_000:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(ticks_at) == 20_000
    assert ticks_at[-1] - ticks_at[0] >= 10  # yielded about every 1000 messages


async def test_garbage_is_counted_and_good_traffic_is_unaffected():
    good = [frame(f"good-{i}") for i in range(200)]
    garbage = [b"", b"\xc1\xc1", b"not msgpack at all", wire.msgpack.packb({"v": 9}),
               wire.msgpack.packb([1, 2, 3])]
    mixed: list[bytes] = []
    for i, f in enumerate(good):
        mixed.append(f)
        mixed.append(garbage[i % len(garbage)])
    collector = Collector(200)
    counters = ZmqIngressCounters()
    async with trio.open_nursery() as nursery:
        bound = await run_ingress(nursery, collector, counters)
        send_all_in_thread(bound, mixed)
        with trio.fail_after(10):
            await collector.done.wait()
            while counters.frames < 400:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(collector.messages) == 200
    assert counters.bad == 200 and counters.accepted == 200 and counters.frames == 400


async def test_duplicates_and_expired_are_counted_and_reported():
    frames = [
        frame("dup"),
        frame("dup"),  # same call-id, event and token: dropped
        frame("dup", event="cancel"),  # another event: kept
        frame("dup", token="other"),  # another device: kept
        frame("old", sent_at=NOW - 100),  # default call ttl is 45 s: expired
        frame("old-but-long", sent_at=NOW - 100, ttl=300),  # its own ttl: kept
        frame("just-expired", sent_at=NOW - 10, ttl=11),  # wall clock is NOW + 1: expired
        wire.encode_account("message", "m1", "sip:a@x", "sip:b@x", account="bob@x", sent_at=NOW),
        wire.encode_account("message", "m1", "sip:a@x", "sip:b@x", account="bob@x", sent_at=NOW),
    ]
    collector = Collector(len(frames))
    counters = ZmqIngressCounters()
    async with trio.open_nursery() as nursery:
        bound = await run_ingress(nursery, collector, counters)
        send_all_in_thread(bound, frames)
        with trio.fail_after(10):
            await collector.done.wait()
        nursery.cancel_scope.cancel()
    assert [(m.call_id, m.event, m.target) for m in collector.messages] == [
        ("dup", "incoming_session", "tok"), ("dup", "cancel", "tok"),
        ("dup", "incoming_session", "other"), ("old-but-long", "incoming_session", "tok"),
        ("m1", "message", "bob@x"),
    ]
    assert collector.discarded == [("dup", "duplicate"), ("old", "expired"),
                                   ("just-expired", "expired"), ("m1", "duplicate")]
    snap = counters.snapshot()
    assert snap == {"frames": 9, "accepted": 5, "bad": 0, "expired": 2, "duplicates": 2,
                    "shed": 0, "handler_errors": 0, "clients_refused": 0}


async def test_a_failing_handler_is_counted_and_the_loop_goes_on():
    seen = []

    def handler(msg):
        seen.append(msg.call_id)
        if msg.call_id == "boom":
            raise RuntimeError("bug")

    counters = ZmqIngressCounters()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(lambda task_status: serve_zmq(
            "tcp://127.0.0.1:*", handler, counters=counters, wall_clock=lambda: NOW,
            task_status=task_status))
        send_all_in_thread(bound, [frame("boom"), frame("fine")])
        with trio.fail_after(10):
            while counters.frames < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert seen == ["boom", "fine"]
    assert counters.handler_errors == 1 and counters.accepted == 1


async def test_ipc_endpoint_creates_a_private_folder_and_socket(tmp_path):
    run_dir = tmp_path / "run" / "pushsidecar"
    endpoint = f"ipc://{run_dir}/push.sock"
    collector = Collector(1)
    async with trio.open_nursery() as nursery:
        bound = await run_ingress(nursery, collector, ZmqIngressCounters(), endpoint)
        assert bound == endpoint
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(run_dir / "push.sock").st_mode) == 0o600
        sender = wire.Sender(endpoint)
        assert sender.send(frame("via-ipc"))
        with trio.fail_after(10):
            await collector.done.wait()
        sender.close()
        nursery.cancel_scope.cancel()
    assert collector.messages[0].call_id == "via-ipc"


async def test_cancellation_closes_the_socket_so_the_endpoint_can_be_bound_again(tmp_path):
    endpoint = f"ipc://{tmp_path}/again.sock"
    for _ in range(2):
        collector = Collector(1)
        async with trio.open_nursery() as nursery:
            await run_ingress(nursery, collector, ZmqIngressCounters(), endpoint)
            sender = wire.Sender(endpoint)
            sender.send(frame("x"))
            with trio.fail_after(10):
                await collector.done.wait()
            sender.close()
            nursery.cancel_scope.cancel()


def test_recent_keys_expire_and_stay_bounded():
    recent = RecentKeys(max_size=3)
    assert not recent.seen("a", now=0, expires=10)
    assert recent.seen("a", now=5, expires=15)
    assert not recent.seen("a", now=10, expires=20)  # expired at 10: new again
    for key in "bcd":
        assert not recent.seen(key, now=11, expires=100)
    assert len(recent) == 3  # "a" (closest to expiry) was forgotten
    assert not recent.seen("a", now=12, expires=30)
    assert len(recent) == 3
    for i in range(10_000):
        recent.seen(i, now=13, expires=13 + i)
    assert len(recent) == 3 and len(recent._heap) < 10
