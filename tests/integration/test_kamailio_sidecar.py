"""The whole proxy path: a real Kamailio (app_python3), the real sidecar, the simulator.

sipp plays the caller and the phone; the phone registers with RFC 8599
parameters (``pn-param=<TeamID>.<bundle>.remote&voip``), Kamailio sends the
push over ZeroMQ to the sidecar running in this trio loop, and the sidecar
sends it over HTTP/2 + TLS to the simulator, which records it.

RFC 8599 meets the configuration like this: the wire mapping turns the
``pn-param`` into the bare bundle id (``sidecar/wire.py``: team id and service
label cut off), so the test configuration adds one application whose
``app_id`` is that bundle id (the simulator's own sections use
``<bundle>.prod``, the Sylk convention).

Blocking sipp waits run in worker threads so the sidecar keeps serving.
Without kamailio/sipp these tests skip, unless PUSHSIDECAR_REQUIRE_KAMAILIO=1
(CI), where they fail.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import msgpack
import pytest
import trio
import zmq

from sidecar.model import OutcomeKind
from sidecar.sim.cli import write_config
from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator
from sidecar.wire import MAX_FRAME, encode_direct

from kamailio_fixtures import Kamailio, free_udp_port, require_tools, sipp, start_kamailio
from sidecar_fixtures import running_sidecar

pytestmark = pytest.mark.kamailio

WAIT_MS = 6000  # long enough for a sipp "phone" to wake up
TEST_DEADLINE = 90
VOIP_TOKEN = "ab" * 32  # the simulator accepts hex tokens only
REMOTE_TOKEN = "cd" * 32
_users = itertools.count(1)


def new_user(prefix: str) -> str:
    return f"{prefix}{next(_users)}"


def pn_params(creds: SimCredentials) -> str:
    """Linphone-style RFC 8599 contact parameters for the simulator's token-auth app."""
    return (f"pn-provider=apns;pn-prid={REMOTE_TOKEN}:remote&{VOIP_TOKEN}:voip;"
            f"pn-param={creds.team_id}.{creds.token_bundle_id}.remote&voip")


def stack_config(tmp: Path, creds: SimCredentials, sim_port: int, endpoint: str) -> Path:
    """A sidecar config on ``endpoint`` with an app for the RFC 8599 bundle id."""
    config_dir = write_config(tmp / "config", creds, sim_port, sidecar_port=0)
    general = config_dir / "general.ini"
    general.write_text(general.read_text() + f"\n[zmq]\nendpoint = {endpoint}\nrun_dir = {tmp}\n")
    apps = config_dir / "applications.ini"
    apps.write_text(apps.read_text() + f"""
# pn-param <TeamID>.<bundle>[.voip] maps to app-id <bundle> (sidecar/wire.py)
[rfc8599-apple]
app_id = {creds.token_bundle_id}
app_type = sylk
app_platform = apple
apple_push_url = 127.0.0.1:{sim_port}
apple_key = {creds.apns_key_file}
key_id = {creds.key_id}
team_id = {creds.team_id}
tls_ca_file = {creds.ca_file}
""")
    return config_dir


@pytest.fixture(scope="module")
def kam(tmp_path_factory):
    require_tools()
    tmp = tmp_path_factory.mktemp("kamsc")
    kamailio = start_kamailio(tmp, endpoint=f"ipc://{tmp}/push.sock", wait_ms=WAIT_MS)
    yield kamailio
    kamailio.stop()
    log = kamailio.log()
    assert "Traceback" not in log, log[-5000:]


async def in_thread(fn, *args, **kwargs):
    """Run a blocking sipp wait in a thread (abandoned if the test times out)."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                         abandon_on_cancel=True)


def bounded(test):
    """No test of this file may hang: each one fails after TEST_DEADLINE seconds
    (sidecar shutdown included)."""
    @functools.wraps(test)
    async def wrapper(*args, **kwargs):
        with trio.fail_after(TEST_DEADLINE):
            return await test(*args, **kwargs)
    return wrapper


async def register(tmp: Path, kamailio: Kamailio, user: str, phone_port: int, pn: str,
                   name: str = "register") -> None:
    run = sipp(tmp, f"{name}-{user}", "register.xml", kamailio,
               keys={"user": user, "contact_port": str(phone_port), "pn": pn})
    await in_thread(run.assert_ok, 15)


def apns_for(sim: Simulator, user: str) -> list[dict]:
    """APNs requests the simulator recorded for calls to ``user``, oldest first
    (a cancel body has no to_uri: it is matched by the Call-ID of its call)."""
    apns = [r for r in sim.requests if r["path"].startswith("/3/device/")]
    calls = {r["body"]["call-id"] for r in apns
             if r.get("body", {}).get("to_uri") == f"sip:{user}@127.0.0.1"}
    return [r for r in apns if r.get("body", {}).get("call-id") in calls]


async def wait_apns(sim: Simulator, user: str, count: int, timeout: float = 10.0) -> list[dict]:
    with trio.move_on_after(timeout):
        while len(apns_for(sim, user)) < count:
            await trio.sleep(0.02)
    got = apns_for(sim, user)
    assert len(got) >= count, f"{len(got)} of {count} pushes for {user} within {timeout} s: {got}"
    return got


async def wait_outcomes(runtime, count: int, timeout: float = 15.0) -> dict:
    counts = runtime.dispatcher.counts
    with trio.move_on_after(timeout):
        while sum(counts.values()) < count or runtime.dispatcher.in_flight:
            await trio.sleep(0.02)
    return dict(counts)


def sipp_call_ids(run) -> set[str]:
    """The Call-IDs sipp sent (from its message log)."""
    ids = set()
    for line in (run.log_dir / "messages.log").read_text(errors="replace").splitlines():
        if line.lower().startswith("call-id:"):
            ids.add(line.split(":", 1)[1].strip())
    return ids


@bounded
async def test_call_pushes_through_the_sidecar_and_is_answered(
        kam, tmp_path, sim, sim_credentials) -> None:  # noqa: F811
    creds = sim_credentials
    async with running_sidecar(stack_config(tmp_path, creds, sim.port, kam.endpoint)) as handle:
        user = new_user("bob")
        phone_port = free_udp_port()
        await register(tmp_path, kam, user, phone_port, pn_params(creds))
        phone = sipp(tmp_path, f"phone-{user}", "phone_uas.xml", kam, local_port=phone_port)
        caller = sipp(tmp_path, f"caller-{user}", "caller_answered.xml", kam,
                      keys={"callee": user, "media": "video"})
        [record] = await wait_apns(sim, user, 1)
        assert record["status"] == 200
        assert record["path"] == f"/3/device/{VOIP_TOKEN}"  # the voip token for a call
        headers = record["headers"]
        assert headers["apns-topic"] == f"{creds.token_bundle_id}.voip"
        assert headers["apns-push-type"] == "voip"
        body = record["body"]
        assert body["event"] == "incoming_session"
        call_id = body["call-id"]
        assert call_id.startswith("1-") and call_id.endswith("@127.0.0.1")
        assert body["from_uri"].startswith("sip:alice@127.0.0.1")
        assert body["from_display_name"] == "Alice"
        assert body["media-type"] == "video"
        # The phone wakes up and registers again: the held INVITE is relayed and answered.
        await register(tmp_path, kam, user, phone_port, pn_params(creds), name="wakeup")
        await in_thread(caller.assert_ok, 20)
        await in_thread(phone.assert_ok, 20)
        assert call_id in (phone.log_dir / "messages.log").read_text()
        counts = await wait_outcomes(handle.runtime, 1)
        await trio.sleep(0.3)  # a stray cancel push would show up by now
        assert len(apns_for(sim, user)) == 1  # answered: no cancel push
        assert counts[OutcomeKind.DELIVERED] == 1 and sum(counts.values()) == 1


@bounded
async def test_cancel_push_reaches_the_simulator(kam, tmp_path, sim, sim_credentials) -> None:  # noqa: F811
    creds = sim_credentials
    async with running_sidecar(stack_config(tmp_path, creds, sim.port, kam.endpoint)) as handle:
        user = new_user("carol")
        await register(tmp_path, kam, user, free_udp_port(), pn_params(creds))
        caller = sipp(tmp_path, f"cancel-{user}", "caller_cancel.xml", kam, keys={"callee": user})
        await in_thread(caller.assert_ok, 15)
        call, cancel = await wait_apns(sim, user, 2)
        assert call["body"]["event"] == "incoming_session"
        assert cancel["body"]["event"] == "cancel"
        assert cancel["body"]["call-id"] == call["body"]["call-id"]
        assert cancel["body"]["reason"]
        assert cancel["path"] == f"/3/device/{REMOTE_TOKEN}"  # the remote token for a cancel
        assert cancel["headers"]["apns-topic"] == creds.token_bundle_id
        assert cancel["headers"]["apns-push-type"] == "background"
        assert cancel["status"] == 200
        counts = await wait_outcomes(handle.runtime, 2)
        assert counts[OutcomeKind.DELIVERED] == 2 and sum(counts.values()) == 2


@bounded
async def test_sidecar_down_calls_still_answered_and_queued_pushes_sent_later(
        tmp_path, sim, sim_credentials) -> None:  # noqa: F811
    """Calls made while nothing listens get 110/480 on time; the sidecar, started
    after them, takes the queued pushes and each ends in exactly one outcome."""
    require_tools()
    creds = sim_credentials
    wait_ms, calls = 1500, 20
    endpoint = f"ipc://{tmp_path}/late.sock"
    kamailio = start_kamailio(tmp_path, endpoint=endpoint, wait_ms=wait_ms)
    try:
        user = new_user("sleepy")
        await register(tmp_path, kamailio, user, free_udp_port(), pn_params(creds))
        caller = sipp(tmp_path, "unanswered", "caller_unanswered.xml", kamailio, calls=calls,
                      rate=40, keys={"callee": user})
        elapsed = await in_thread(caller.assert_ok, 20)
        # 20 calls started over 0.5 s, each answered 480 after the wait: no stall.
        assert elapsed < wait_ms / 1000 + 3.0, elapsed
        call_ids = sipp_call_ids(caller)
        assert len(call_ids) == calls
        assert apns_for(sim, user) == []
        async with running_sidecar(stack_config(tmp_path, creds, sim.port, endpoint)) as handle:
            counts = await wait_outcomes(handle.runtime, calls)
            await trio.sleep(0.3)  # nothing more may arrive
            counts = dict(handle.runtime.dispatcher.counts)
            frames = handle.runtime.proxy_ingress.counters.frames
        assert sum(counts.values()) == calls, counts
        assert counts[OutcomeKind.DELIVERED] + counts[OutcomeKind.EXPIRED] == calls, counts
        assert frames == calls
        delivered = [r["body"]["call-id"] for r in apns_for(sim, user) if r["status"] == 200]
        assert len(delivered) == counts[OutcomeKind.DELIVERED]
        assert len(set(delivered)) == len(delivered) and set(delivered) <= call_ids
    finally:
        kamailio.stop()
    assert "Traceback" not in kamailio.log()


def garbage_frames(creds: SimCredentials) -> list[bytes]:
    """Frames the sidecar must count as bad and otherwise ignore."""
    good_map = msgpack.unpackb(encode_direct(
        "incoming_session", "garbage-call", "sip:a@x", "sip:b@x",
        app_id=creds.token_bundle_id, platform="apple", token=VOIP_TOKEN))
    frames = [
        b"", b"\x00", b"\xc1", b"not msgpack at all", msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 2, "e": "incoming_session"}),
        msgpack.packb(dict(good_map, v=99)),
        msgpack.packb(dict(good_map, zz="typo")),
        msgpack.packb(dict(good_map, e="party")),
        msgpack.packb({k: v for k, v in good_map.items() if k != "tk"}),
        msgpack.packb(dict(good_map, ts="yesterday")),
        b"\x81" * 100, b"x" * (MAX_FRAME + 1),
    ]
    return frames * 40


@bounded
async def test_garbage_burst_changes_nothing_for_good_traffic(
        kam, tmp_path, sim, sim_credentials) -> None:  # noqa: F811
    creds = sim_credentials
    garbage = garbage_frames(creds)
    calls = 10
    async with running_sidecar(stack_config(tmp_path, creds, sim.port, kam.endpoint)) as handle:
        user = new_user("steady")
        await register(tmp_path, kam, user, free_udp_port(), pn_params(creds))
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(handle.zmq_endpoint)
        try:
            half = len(garbage) // 2
            for frame in garbage[:half]:
                sock.send(frame)
            caller = sipp(tmp_path, f"cancel-{user}", "caller_cancel.xml", kam, calls=calls,
                          rate=20, keys={"callee": user})
            await trio.sleep(0.2)  # the rest lands among the calls' pushes
            for frame in garbage[half:]:
                sock.send(frame)
            await in_thread(caller.assert_ok, 20)
            records = await wait_apns(sim, user, 2 * calls)
            counters = handle.runtime.proxy_ingress.counters
            with trio.move_on_after(5):
                while counters.frames < len(garbage) + 2 * calls:
                    await trio.sleep(0.02)
            counts = await wait_outcomes(handle.runtime, 2 * calls)
        finally:
            sock.close(linger=0)
            ctx.term()
        assert counters.bad == len(garbage)
        assert counters.accepted == 2 * calls
        assert counters.frames == len(garbage) + 2 * calls
        assert counts[OutcomeKind.DELIVERED] == 2 * calls and sum(counts.values()) == 2 * calls
        events = sorted((r["body"]["call-id"], r["body"]["event"]) for r in records)
        call_ids = sipp_call_ids(caller)
        assert events == sorted((c, e) for c in call_ids for e in ("cancel", "incoming_session"))
        assert all(r["status"] == 200 for r in records)
