"""The proxy path with a real Kamailio (app_python3) and sipp.

A test-side ZeroMQ PULL socket stands in for the sidecar and receives the
pushes; sipp plays the caller and the phone.  Without kamailio/sipp these
tests skip, unless PUSHSIDECAR_REQUIRE_KAMAILIO=1 (CI), where they fail.
"""

from __future__ import annotations

import itertools
import time

import pytest
import zmq

from sidecar import wire

from kamailio_fixtures import free_udp_port, require_tools, sipp, start_kamailio

pytestmark = pytest.mark.kamailio

WAIT_MS = 6000  # long enough for a sipp "phone" to wake up, short enough for tests
PN = "pn-provider=apns;pn-prid=AAAA0001:remote&BBBB0002:voip;pn-param=TEAM1234.com.example.phone.remote&voip"
_users = itertools.count(1)


def new_user(prefix: str) -> str:
    return f"{prefix}{next(_users)}"


class Pushes:
    """The test's stand-in for the sidecar: a PULL socket on an ipc endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)

    def next(self, timeout: float = 5.0) -> wire.WireMessage:
        assert self.sock.poll(int(timeout * 1000)), f"no push within {timeout} s"
        return wire.decode(self.sock.recv())

    def drain(self) -> list[wire.WireMessage]:
        out = []
        while self.sock.poll(0):
            out.append(wire.decode(self.sock.recv()))
        return out

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_tools()
    tmp = tmp_path_factory.mktemp("kam")
    endpoint = f"ipc://{tmp}/push.sock"
    pushes = Pushes(endpoint)
    kam = start_kamailio(tmp, endpoint=endpoint, wait_ms=WAIT_MS)
    yield kam, pushes, tmp
    kam.stop()
    pushes.close()
    log = kam.log()
    assert "Traceback" not in log, log[-5000:]


def register(tmp, kam, user, phone_port, pn=PN, name="register"):
    run = sipp(tmp, f"{name}-{user}", "register.xml", kam,
               keys={"user": user, "contact_port": str(phone_port), "pn": pn})
    run.assert_ok(15)


def test_call_wakes_the_phone_and_is_answered(stack):
    kam, pushes, tmp = stack
    pushes.drain()
    user = new_user("bob")
    phone_port = free_udp_port()
    register(tmp, kam, user, phone_port)
    assert pushes.drain() == []  # registering sends nothing
    phone = sipp(tmp, f"phone-{user}", "phone_uas.xml", kam, local_port=phone_port)
    caller = sipp(tmp, f"caller-{user}", "caller_answered.xml", kam,
                  keys={"callee": user, "media": "video"})
    push = pushes.next()
    assert push.event == "incoming_session"
    assert (push.platform, push.app_id, push.token) == ("apple", "com.example.phone", "BBBB0002")
    assert push.pn_provider == "apns"
    assert push.call_id.endswith("@127.0.0.1") and push.call_id.startswith("1-")
    assert push.from_uri.startswith("sip:alice@127.0.0.1") and push.display_name == "Alice"
    assert push.to_uri == f"sip:{user}@127.0.0.1"
    assert push.media_type == "video"
    assert abs(push.sent_at - time.time()) < 5
    # The phone wakes up and registers again: the held INVITE is relayed to it.
    register(tmp, kam, user, phone_port, name="wakeup")
    caller.assert_ok(20)
    phone.assert_ok(20)
    assert push.call_id in (phone.log_dir / "messages.log").read_text()
    assert pushes.drain() == []  # answered: no cancel push


def test_one_wakeup_releases_every_held_call(stack):
    kam, pushes, tmp = stack
    pushes.drain()
    user = new_user("multi")
    phone_port = free_udp_port()
    register(tmp, kam, user, phone_port)
    phone = sipp(tmp, f"phone-{user}", "phone_uas.xml", kam, local_port=phone_port, calls=3)
    caller = sipp(tmp, f"caller-{user}", "caller_answered.xml", kam, calls=3, rate=50,
                  keys={"callee": user, "media": "audio"})
    got = [pushes.next() for _ in range(3)]
    assert len({p.call_id for p in got}) == 3
    assert {p.media_type for p in got} == {"audio"}
    register(tmp, kam, user, phone_port, name="wakeup")
    caller.assert_ok(20)
    phone.assert_ok(20)


def test_cancel_sends_a_cancel_push_and_the_caller_gets_487(stack):
    kam, pushes, tmp = stack
    pushes.drain()
    user = new_user("carol")
    register(tmp, kam, user, free_udp_port())
    caller = sipp(tmp, f"cancel-{user}", "caller_cancel.xml", kam, keys={"callee": user})
    first = pushes.next()
    second = pushes.next()
    caller.assert_ok(15)
    assert first.event == "incoming_session" and first.token == "BBBB0002"
    assert second.event == "cancel" and second.call_id == first.call_id
    assert second.token == "AAAA0001"  # the remote (not voip) token for a cancel
    assert second.reason
    assert pushes.drain() == []


def test_legacy_push_parameters(stack):
    kam, pushes, tmp = stack
    pushes.drain()
    user = new_user("legacy")
    register(tmp, kam, user, free_udp_port(),
             pn="pn-type=firebase;pn-tok=fcmTok123;app-id=com.example.android;pn-silent=1")
    caller = sipp(tmp, f"cancel-{user}", "caller_cancel.xml", kam, keys={"callee": user})
    push = pushes.next()
    assert (push.platform, push.app_id, push.token, push.silent) == (
        "firebase", "com.example.android", "fcmTok123", True)
    assert pushes.next().event == "cancel"
    caller.assert_ok(15)


@pytest.mark.parametrize(
    ("pn", "code", "logged"),
    [
        ("pn-provider=apns;pn-prid=AAAA;pn-param=NOBUNDLE", "400", "expected <TeamID>.<BundleID>"),
        ("pn-provider=webpush;pn-prid=AAAA;pn-param=x", "555", "'webpush' is not supported"),
        ("pn-prid=AAAA", "400", "without pn-provider"),
    ],
)
def test_malformed_push_parameters_are_rejected_and_logged(stack, pn, code, logged):
    kam, pushes, tmp = stack
    user = new_user("bad")
    run = sipp(tmp, f"rejected-{user}", "register_rejected.xml", kam,
               keys={"user": user, "contact_port": str(free_udp_port()), "pn": pn})
    run.assert_ok(15)
    assert f"SIP/2.0 {code} " in (run.log_dir / "messages.log").read_text()
    log = kam.log()
    assert f"REGISTER of sip:{user}@127.0.0.1 rejected ({code})" in log
    assert logged in log


def test_no_sidecar_listening_kamailio_still_answers_promptly(tmp_path):
    """Nobody bound to the endpoint and a tiny queue: 110 then 480, no stall, drops logged."""
    require_tools()
    wait_ms = 1500
    kam = start_kamailio(tmp_path, endpoint=f"ipc://{tmp_path}/nobody.sock", wait_ms=wait_ms,
                         sndhwm=2)
    try:
        user = new_user("asleep")
        register(tmp_path, kam, user, free_udp_port())
        caller = sipp(tmp_path, "unanswered", "caller_unanswered.xml", kam, calls=20, rate=40,
                      keys={"callee": user})
        elapsed = caller.assert_ok(20)
        # 20 calls started over 0.5 s, each answered 480 after the 1.5 s wait.
        assert elapsed < wait_ms / 1000 + 3.0, elapsed
        # With a queue of 2 per worker most pushes were dropped, and said so.
        assert "is full, push dropped" in kam.log()
    finally:
        kam.stop()
    assert "Traceback" not in kam.log()
