"""The ZeroMQ message format: round trips, RFC 8599 mapping, every decode error, the sender."""

from __future__ import annotations

import os
import time

import msgpack
import pytest
import zmq

from sidecar import model, wire
from sidecar.wire import (
    WireError, decode, encode_account, encode_direct, push_target, strip_pn_params, uri_params,
)

CALL = dict(event="incoming_session", call_id="c1@host", from_uri="sip:alice@x", to_uri="sip:bob@x")


def pack(m: dict) -> bytes:
    return msgpack.packb(m, use_bin_type=True)


def base(**extra) -> dict:
    m = {"v": 1, "e": "incoming_session", "ci": "c1", "f": "sip:a@x", "t": "sip:b@x", "ts": 1000.5,
         "ai": "com.example.app", "pl": "apple", "tk": "abcd"}
    m.update(extra)
    return {k: v for k, v in m.items() if v is not ...}


# -- round trips ------------------------------------------------------------


def test_direct_sylk_round_trip_keeps_every_field():
    frame = encode_direct(
        **CALL, app_id="com.example.app", platform="firebase", token="tok:with:colons",
        display_name="Alice", media_type="video", reason="r", silent=False,
        device_id="dev1", sent_at=1234.5, ttl=30,
    )
    msg = decode(frame)
    assert msg == wire.WireMessage(
        event="incoming_session", call_id="c1@host", from_uri="sip:alice@x", to_uri="sip:bob@x",
        sent_at=1234.5, ttl=30, display_name="Alice", media_type="video", reason="r",
        silent=False, device_id="dev1", app_id="com.example.app", platform="firebase",
        token="tok:with:colons",
    )
    assert not msg.is_account and msg.target == "tok:with:colons"


def test_account_round_trip():
    msg = decode(encode_account(**CALL, account="bob@example.com", media_type="audio", sent_at=5.0))
    assert msg.account == "bob@example.com" and msg.is_account
    assert msg.app_id is msg.platform is msg.token is None
    assert msg.target == "bob@example.com"


def test_sent_at_defaults_to_now_and_is_a_float():
    before = time.time()
    msg = decode(encode_direct(**CALL, app_id="a", platform="apple", token="t"))
    assert before <= msg.sent_at <= time.time()
    msg = decode(pack(base(ts=7)))
    assert msg.sent_at == 7.0 and type(msg.sent_at) is float


def test_frame_is_small():
    frame = encode_direct(**CALL, pn_provider="apns", pn_prid="a" * 64, pn_param="T.com.x.app.voip",
                          display_name="Alice", media_type="audio")
    assert len(frame) < 220


def test_event_and_media_lists_match_the_model():
    assert wire.EVENTS == model.EVENTS
    assert wire.MEDIA_TYPES == model.MEDIA_TYPES
    assert wire.CALL_EVENTS == {e.value for e in model.Event if e.is_call}


def test_encode_refuses_mixed_or_missing_addressing():
    with pytest.raises(WireError):
        encode_direct(**CALL, app_id="a", platform="apple", token="t", pn_provider="apns")
    with pytest.raises(WireError):
        encode_direct(**CALL, app_id="a", platform="apple")


def test_repr_shortens_tokens():
    msg = decode(pack(base(tk="0123456789abcdef0123456789abcdef")))
    assert "0123456789abcdef0123456789abcdef" not in repr(msg)
    assert "01234567...cdef" in repr(msg)


# -- RFC 8599 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "param", "platform", "app_id"),
    [
        ("apns", "ABCD1234.com.example.app", "apple", "com.example.app"),
        ("apns", "ABCD1234.com.example.app.voip", "apple", "com.example.app"),
        ("APNS.dev", "ABCD1234.com.example.app.voip", "apple", "com.example.app"),
        ("apns", "ABCD1234.org.linphone.phone.remote&voip", "apple", "org.linphone.phone"),
        ("apns", "ABCD1234.org.linphone.phone.voip&remote", "apple", "org.linphone.phone"),
        ("fcm", "929724111839", "firebase", "929724111839"),
        ("fcm", "my-project.id", "firebase", "my-project.id"),
    ],
)
def test_pn_param_mapping(provider, param, platform, app_id):
    msg = decode(encode_direct(**CALL, pn_provider=provider, pn_prid="tok", pn_param=param))
    assert (msg.platform, msg.app_id, msg.token) == (platform, app_id, "tok")
    assert (msg.pn_provider, msg.pn_prid, msg.pn_param) == (provider, "tok", param)


@pytest.mark.parametrize(
    ("event", "token"),
    [("incoming_session", "tokB"), ("incoming_conference_request", "tokB"),
     ("cancel", "tokA"), ("message", "tokA"), ("transfer", "tokA")],
)
def test_multi_token_prid_picks_voip_for_calls_and_remote_otherwise(event, token):
    msg = decode(encode_direct(event, "c", "sip:a@x", "sip:b@x", pn_provider="apns",
                               pn_prid="tokA:remote&tokB:voip", pn_param="T.com.x.remote&voip"))
    assert msg.token == token


def test_multi_token_falls_back_to_the_other_kind_and_keeps_fcm_colons():
    assert wire.choose_token("tokA:remote", "incoming_session") == "tokA"
    assert wire.choose_token("tokB:voip", "cancel") == "tokB"
    assert wire.choose_token("cXyz:APA91bH", "incoming_session") == "cXyz:APA91bH"
    assert wire.split_prid("a:voip&b:remote") == {"voip": "a", "remote": "b"}


@pytest.mark.parametrize(
    ("provider", "prid", "param", "message"),
    [
        ("webpush", "t", "x", "pn-provider 'webpush' is not supported"),
        ("apns", "t", None, "pn-param is required with pn-provider apns"),
        ("apns", "t", "NODOT", "expected <TeamID>.<BundleID>"),
        ("apns", "t", ".com.x", "expected <TeamID>.<BundleID>"),
        ("apns", "t", "TEAM.voip", "empty bundle id"),
        ("apns", "a:voip&:remote", "T.com.x", "empty token"),
        ("apns", "a:voip&b:voip", "T.com.x", "more than one voip token"),
        ("fcm", "t", "", "pn-param is required"),
    ],
)
def test_malformed_pn_params_are_explained(provider, prid, param, message):
    with pytest.raises(WireError, match=message.replace("(", r"\(")):
        wire.resolve_pn(provider, prid, param, "incoming_session")
    m = base(ai=..., pl=..., tk=..., pp=provider, pr=prid)
    if param is not None:
        m["pa"] = param
    with pytest.raises(WireError):
        decode(pack(m))


# -- every decode error -----------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xc1", "not a msgpack frame"),
        (b"", "not a msgpack frame"),
        (pack(base()) + b"\x01", "not a msgpack frame"),
        (pack([1, 2]), "msgpack list, not a map"),
        (pack({1: 2}), "not a msgpack frame"),  # msgpack refuses integer keys
        (b"\x00" * (wire.MAX_FRAME + 1), "larger than"),
        (pack(base(v=...)), "unknown version None"),
        (pack(base(v=2)), "unknown version 2"),
        (pack(base(v="1")), "unknown version '1'"),
        (pack(base(v=True)), "unknown version True"),
        (pack(base(zz=1, yy=2)), "unknown keys: yy, zz"),
        (pack(base(e=...)), "missing key 'e' \\(event\\)"),
        (pack(base(e="ring")), "unknown event 'ring'"),
        (pack(base(e=5)), "'e' \\(event\\) must be a string, not int"),
        (pack(base(e=[1])), "'e' \\(event\\) must be a string, not list"),
        (pack(base(ci=...)), "missing key 'ci' \\(call-id\\)"),
        (pack(base(ci="")), "'ci' \\(call-id\\) is empty"),
        (pack(base(f=b"x")), "'f' \\(from\\) must be a string, not bytes"),
        (pack(base(t=None)), "missing key 't' \\(to\\)"),
        (pack(base(ts=...)), "missing key 'ts'"),
        (pack(base(ts="now")), "'ts' \\(sent-at\\) must be a number, not str"),
        (pack(base(ttl=0)), "'ttl' must be a number of seconds above 0"),
        (pack(base(ttl=-1.5)), "'ttl' must be a number of seconds above 0"),
        (pack(base(ttl="30")), "'ttl' must be a number of seconds above 0"),
        (pack(base(ttl=10**9)), "'ttl' must be a number of seconds above 0 and up to"),
        (pack(base(sl=1)), "'sl' \\(silent\\) must be a boolean"),
        (pack(base(mt="hologram")), "unknown media type 'hologram'"),
        (pack(base(mt=3)), "'mt' \\(media type\\) must be a string"),
        (pack(base(dn=3)), "'dn' \\(display name\\) must be a string"),
        (pack(base(r=[])), "'r' \\(reason\\) must be a string"),
        (pack(base(di=1.0)), "'di' \\(device id\\) must be a string"),
        (pack(base(ai=..., pl=..., tk=...)), "exactly one of.*found none"),
        (pack(base(a="bob@x")), "exactly one of.*found keys of several"),
        (pack(base(pp="apns")), "exactly one of.*found keys of several"),
        (pack(base(tk=...)), "missing key 'tk' \\(token\\)"),
        (pack(base(ai=5)), "'ai' \\(app-id\\) must be a string"),
        (pack(base(pl="")), "'pl' \\(platform\\) is empty"),
        (pack(base(ai=..., pl=..., tk=..., pp="apns", pa="T.x")), "missing key 'pr' \\(pn-prid\\)"),
        (pack(base(ai=..., pl=..., tk=..., a="bob")), "account 'bob' must be user@domain"),
        (pack(base(ai=..., pl=..., tk=..., a="@x")), "must be user@domain"),
    ],
)
def test_decode_errors(frame, message):
    with pytest.raises(WireError, match=message):
        decode(frame)


def test_optional_nil_and_empty_strings_count_as_absent():
    msg = decode(pack(base(dn=None, mt=None, r="", sl=None)))
    assert msg.display_name is None and msg.media_type is None and msg.reason is None


# -- sender -----------------------------------------------------------------


@pytest.fixture
def pull():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)
    ctx.term()


def test_sender_delivers_and_counts(pull):
    sock, endpoint = pull
    sender = wire.Sender(endpoint)
    try:
        assert sender.sockets_created == 0  # lazy: nothing before the first send
        frame = encode_direct(**CALL, app_id="a", platform="apple", token="t")
        assert sender.send(frame) is True
        assert sock.poll(2000) and decode(sock.recv()).call_id == "c1@host"
        assert sender.stats() == {"sent": 1, "dropped": 0, "errors": 0}
    finally:
        sender.close()


def test_sender_endpoint_and_hwm_from_environment(monkeypatch):
    monkeypatch.setenv("PUSHSIDECAR_ENDPOINT", "ipc:///tmp/x.sock")
    monkeypatch.setenv("PUSHSIDECAR_SNDHWM", "7")
    sender = wire.Sender()
    assert (sender.endpoint, sender.sndhwm) == ("ipc:///tmp/x.sock", 7)
    monkeypatch.delenv("PUSHSIDECAR_ENDPOINT")
    monkeypatch.setenv("PUSHSIDECAR_SNDHWM", "lots")
    sender = wire.Sender()
    assert (sender.endpoint, sender.sndhwm) == (wire.DEFAULT_ENDPOINT, 10000)


def test_sender_makes_a_new_socket_when_the_pid_changes(pull):
    sock, endpoint = pull
    pid = [100]
    sender = wire.Sender(endpoint, getpid=lambda: pid[0])
    try:
        sender.send(b"one")
        first = sender._socket
        sender.send(b"two")
        assert sender._socket is first and sender.sockets_created == 1
        pid[0] = 101  # as after a fork
        sender.send(b"three")
        assert sender._socket is not first and sender.sockets_created == 2
        got = sorted(sock.recv() for _ in range(3) if sock.poll(2000))
        assert got == [b"one", b"three", b"two"]
    finally:
        sender.close()


def test_sender_without_pid_check_keeps_its_socket(pull):
    # check_pid=False: the caller resets the sender after a fork itself (the
    # proxies' child_init), so no getpid() per send and no new socket.
    sock, endpoint = pull
    calls = []
    sender = wire.Sender(endpoint, getpid=lambda: calls.append(1) or 100 + len(calls), check_pid=False)
    try:
        for frame in (b"one", b"two", b"three"):
            assert sender.send(frame)
        assert sender.sockets_created == 1 and len(calls) == 1  # only when opening
        got = sorted(sock.recv() for _ in range(3) if sock.poll(2000))
        assert got == [b"one", b"three", b"two"]
    finally:
        sender.close()


def test_sender_works_in_a_forked_child(pull):
    """The real thing: a socket created in the parent, then used after fork."""
    sock, endpoint = pull
    sender = wire.Sender(endpoint)
    try:
        sender.send(b"parent")
        assert sock.poll(2000) and sock.recv() == b"parent"
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            ok = sender.send(b"child") and sender.sockets_created == 2
            time.sleep(0.2)  # LINGER is 0: let the io thread flush before exit
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sock.poll(3000) and sock.recv() == b"child"
    finally:
        sender.close()


def test_sender_drops_and_counts_when_the_queue_is_full():
    logged = []
    # Nobody bound: with SNDHWM 5 the queue fills, then sends drop at once.
    sender = wire.Sender("ipc:///nonexistent-dir/pushsidecar-test.sock", sndhwm=5, log=logged.append)
    try:
        start = time.monotonic()
        results = [sender.send(b"x") for _ in range(50)]
        assert time.monotonic() - start < 1.0
        assert results.count(True) == sender.sent >= 5
        assert results.count(False) == sender.dropped == 50 - sender.sent
        assert len(logged) == 1 and "is full" in logged[0]  # rate-limited
    finally:
        sender.close()


def test_sender_never_raises_on_a_bad_endpoint():
    logged = []
    sender = wire.Sender("nonsense://x", log=logged.append)
    assert sender.send(b"x") is False
    assert sender.errors == 1 and "cannot send" in logged[0]


def test_rate_limited_log_counts_suppressed_lines():
    now = [0.0]
    lines = []
    limited = wire.RateLimitedLog(lines.append, interval=10, clock=lambda: now[0])
    assert limited("a") and not limited("b") and not limited("c")
    now[0] = 11
    assert limited("d")
    assert lines == ["a", "d (2 similar messages suppressed)"]
    assert wire.RateLimitedLog(lambda text: 1 / 0)("boom")  # a failing log never raises


def test_a_fractional_ttl_is_the_proxy_hold_time():
    msg = decode(encode_direct("incoming_session", "c", "sip:a@x", "sip:b@x", app_id="a",
                               platform="apple", token="t", ttl=1.5))
    assert msg.ttl == 1.5


def test_message_text_travels_with_its_type():
    msg = decode(encode_direct("message", "c", "sip:a@x", "sip:b@x", app_id="a", platform="apple",
                               token="t", media_type="sms", content="hi", content_type="text/plain"))
    assert (msg.content, msg.content_type) == ("hi", "text/plain")


@pytest.mark.parametrize("provider, sandbox", [("apns", False), ("apns.dev", True), ("APNS.DEV", True),
                                               ("fcm", False)])
def test_apns_dev_marks_a_development_build(provider, sandbox):
    msg = decode(encode_direct("incoming_session", "c", "sip:a@x", "sip:b@x", pn_provider=provider,
                               pn_prid="tok", pn_param="TEAM.com.x" if provider != "fcm" else "proj"))
    assert msg.sandbox is sandbox


def test_contact_parsing_shared_by_the_proxy_scripts():
    contact = ('<sip:bob@10.0.0.5:5062;transport=udp;pn-prid=AA:voip%26BB:remote;pn-provider=apns.dev;'
               'pn-param=TEAM.org.linphone.phone.voip%26remote;pn-silent=1>;+sip.instance="<urn:uuid:1>"')
    params = uri_params(contact)
    assert params["pn-prid"] == "AA:voip&BB:remote" and "+sip.instance" not in params
    assert push_target(params) == {"pn_provider": "apns.dev", "pn_prid": "AA:voip&BB:remote",
                                   "pn_param": "TEAM.org.linphone.phone.voip&remote"}
    assert strip_pn_params(contact) == "sip:bob@10.0.0.5:5062;transport=udp"
    assert push_target(uri_params("<sip:alice@pc:5060>")) is None
    assert push_target(uri_params("<sip:s@h;pn-type=ios;pn-tok=T;app-id=com.x;pn-silent=0>")) == {
        "app_id": "com.x", "platform": "apple", "token": "T", "silent": False}
    for bad, text in (("pn-provider=webpush;pn-prid=x;pn-param=y", "not supported"),
                      ("pn-type=ios;app-id=a", "needs a pn-tok"), ("pn-prid=x", "without pn-provider")):
        with pytest.raises(WireError, match=text):
            push_target(uri_params(f"<sip:s@h;{bad}>"))
