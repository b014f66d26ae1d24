"""The OpenSIPS python script, run against a small stand-in of the `OpenSIPS` module."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import zmq

from sidecar import wire

SCRIPT = Path(__file__).resolve().parents[2] / "opensips_scripts" / "pushsidecar_opensips.py"
URI = ("sip:bob@10.0.0.5:5062;transport=udp;pn-provider=apns;"
       "pn-prid=AAAA0001:remote%26BBBB0002:voip;pn-param=TEAM1234.com.example.phone.remote%26voip")


class FakeMsg:
    """What the python module gives a method: get_pseudoVar returns '<null>' when unset."""

    def __init__(self, pvs: dict[str, str]) -> None:
        self.pvs = pvs

    def get_pseudoVar(self, name: str) -> str:
        return self.pvs.get(name, "<null>")


class OldMsg:
    """OpenSIPS 3.1-3.3: no get_pseudoVar."""


@pytest.fixture
def script(monkeypatch):
    logged: list[str] = []
    fake = types.ModuleType("OpenSIPS")
    fake.LM_ERR = logged.append
    monkeypatch.setitem(sys.modules, "OpenSIPS", fake)
    spec = importlib.util.spec_from_file_location("pushsidecar_opensips_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.logged = logged
    return module


@pytest.fixture
def pull():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)
    ctx.term()


def receive(sock) -> wire.WireMessage:
    assert sock.poll(2000), "nothing sent"
    return wire.decode(sock.recv())


def handler_for(script, endpoint, monkeypatch):
    monkeypatch.setenv("PUSHSIDECAR_ENDPOINT", endpoint)
    handler = script.mod_init()
    assert handler.sender is None  # nothing made before the fork
    assert handler.child_init(1) == 0
    return handler


def test_script_uses_the_sidecar_wire_module(script):
    assert script.wire.VERSION == wire.VERSION
    assert script.wire.EVENTS == wire.EVENTS


def test_contact_refresh_sends_an_incoming_session_push(script, pull, monkeypatch):
    sock, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    msg = FakeMsg({
        "$param(reason)": "ini-INVITE", "$param(req_callid)": "call-42@host",
        "$param(uri)": URI, "$avp(pnctx)": 'video sip:alice@x sip:bob@y "Alice Liddell"',
    })
    assert handler.contact_refresh(msg) == 1
    push = receive(sock)
    assert (push.event, push.call_id, push.from_uri, push.to_uri) == (
        "incoming_session", "call-42@host", "sip:alice@x", "sip:bob@y")
    assert push.display_name == "Alice Liddell" and push.media_type == "video"
    assert (push.platform, push.app_id, push.token) == ("apple", "com.example.phone", "BBBB0002")
    handler.sender.close()


def test_contact_refresh_with_the_argument_form_of_old_opensips(script, pull, monkeypatch):
    sock, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    arg = f"ini-INVITE c1@h {URI} audio sip:alice@x sip:bob@y <null>"
    assert handler.contact_refresh(OldMsg(), arg) == 1
    push = receive(sock)
    assert push.call_id == "c1@h" and push.display_name is None and push.media_type == "audio"
    handler.sender.close()


def test_contact_refresh_without_cached_context_still_pushes(script, pull, monkeypatch):
    sock, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    msg = FakeMsg({"$param(reason)": "ini-INVITE", "$param(req_callid)": "c2",
                   "$param(uri)": URI, "$param(aor)": "bob@example.com"})
    assert handler.contact_refresh(msg) == 1
    push = receive(sock)
    assert push.to_uri == "sip:bob@example.com" and push.media_type == "audio"
    handler.sender.close()


def test_message_request_gives_a_message_push(script, pull, monkeypatch):
    sock, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    msg = FakeMsg({"$param(reason)": "ini-MESSAGE", "$param(req_callid)": "m1",
                   "$param(uri)": URI, "$avp(pnctx)": "audio sip:alice@x sip:bob@y"})
    assert handler.contact_refresh(msg) == 1
    push = receive(sock)
    assert push.event == "message" and push.media_type == "sms"
    assert push.token == "AAAA0001"  # not a call: the remote token
    handler.sender.close()


def test_periodic_refresh_is_skipped(script, pull, monkeypatch):
    sock, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    msg = FakeMsg({"$param(reason)": "reg-refresh", "$param(uri)": URI})
    assert handler.contact_refresh(msg) == 1
    assert handler.skipped == 1 and not sock.poll(100)


def test_bad_push_parameters_are_logged_and_return_an_int(script, pull, monkeypatch):
    _, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    msg = FakeMsg({"$param(reason)": "ini-INVITE", "$param(req_callid)": "c3",
                   "$param(uri)": "sip:bob@h;pn-provider=webpush;pn-prid=x;pn-param=y"})
    assert handler.contact_refresh(msg) == -1
    assert any("'webpush' is not supported" in line and "c3" in line for line in script.logged)


def test_every_method_returns_an_int_even_when_everything_breaks(script, monkeypatch):
    monkeypatch.setenv("PUSHSIDECAR_ENDPOINT", "tcp://127.0.0.1:1")
    handler = script.mod_init()

    class Broken:
        def get_pseudoVar(self, name):
            raise SystemError("msg used after the call")

    for method in (handler.contact_refresh, handler.cancel_push):
        result = method(Broken())
        assert type(result) is int
        assert type(method(None, 12345)) is int  # nonsense argument: caught
    assert type(handler.child_init(20000)) is int


def test_cancel_push_uses_the_remote_token(script, pull, monkeypatch):
    sock, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    msg = FakeMsg({"$ci": "c9", "$avp(pnct)": URI, "$fu": "sip:alice@x", "$tu": "sip:bob@y"})
    assert handler.cancel_push(msg) == 1
    push = receive(sock)
    assert push.event == "cancel" and push.token == "AAAA0001" and push.reason == "cancelled"
    assert handler.cancel_push(OldMsg(), f"c10 {URI} sip:alice@x sip:bob@y") == 1
    assert receive(sock).call_id == "c10"
    handler.sender.close()


def test_cancel_without_a_pushed_contact_sends_nothing(script, pull, monkeypatch):
    sock, endpoint = pull
    handler = handler_for(script, endpoint, monkeypatch)
    assert handler.cancel_push(FakeMsg({"$ci": "c1", "$fu": "a", "$tu": "b"})) == -1
    assert not sock.poll(100)


def test_parse_context(script):
    parse = script.parse_context
    assert parse('audio sip:a@x sip:b@y "Bob B"') == ("audio", "sip:a@x", "sip:b@y", "Bob B")
    assert parse("<null> <null> <null> <null>") == (None, None, None, None)
    assert parse(None) == (None, None, None, None)
