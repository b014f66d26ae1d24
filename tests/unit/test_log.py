"""Logging: redaction of secrets, file reopen after rotation, push lines."""

from __future__ import annotations

import io
import logging

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.model import Event, Outcome, OutcomeKind, Push
from sidecar.observe import log as obslog
from sidecar.observe.log import (
    SecretRegistry,
    log_attempt,
    log_outcome,
    log_received,
    parse_fields,
    push_logger,
    register_secret,
    setup_logging,
)


def make_push(**changes) -> Push:
    fields = dict(
        app_id="com.example.app",
        platform="apple",
        token="a1b2c3d4e5f6a7b8c9d0",
        event=Event.INCOMING_SESSION,
        call_id="call-1@example.com",
        from_uri="alice@example.com",
        to_uri="bob@example.com",
        deadline=100.0,
        expires_at=2_000_000_000.0,
        device_id="dev-1",
        request_id="r-1",
    )
    fields.update(changes)
    return Push(**fields)


@pytest.fixture
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def secrets_material(ec_key):
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    token = jwt.encode({"iss": "TEAMID1234", "iat": 1700000000}, ec_key, algorithm="ES256",
                       headers={"kid": "KEYID12345"})
    return {"pem": pem, "jwt": token, "bearer": "opaque-Bearer-value-0123456789",
            "oauth": "ya29.a0AfB_byC-secret-access-token_0123", "registered": "s3cr3t-registered-value"}


@pytest.fixture
def logging_to(tmp_path, monkeypatch):
    """setup_logging into a StringIO and a file; undone afterwards."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handles = []

    def setup(**kwargs):
        stream = io.StringIO()
        options = dict(debug=True, log_to_file=True, log_file=tmp_path / "sidecar.log", debug_hpack=True)
        options.update(kwargs)
        handle = setup_logging(stream=stream, **options)
        handles.append(handle)
        return handle, stream

    yield setup
    for handle in handles:
        handle.close()


def test_secrets_never_reach_stderr_or_file(logging_to, secrets_material, tmp_path):
    handle, stream = logging_to()
    register_secret(secrets_material["registered"])
    s = secrets_material
    log = logging.getLogger("sidecar.pns.apns")
    log.info("sending with headers %s", {"authorization": f"bearer {s['jwt']}", "apns-topic": "x"})
    log.info("Authorization: Bearer %s", s["bearer"])
    log.warning("oauth answer: %r", {"access_token": s["oauth"], "expires_in": 3599})
    log.error("bad key file:\n%s", s["pem"])
    log.info("the value %s is registered", s["registered"])
    # a library logger (hpack at DEBUG) printing header tuples
    logging.getLogger("hpack.hpack").debug("Encoding %s", [(b"authorization", f"bearer {s['jwt']}".encode())])
    try:
        raise RuntimeError(f"token {s['jwt']} refused")
    except RuntimeError:
        log.exception("send failed")

    file_text = (tmp_path / "sidecar.log").read_text()
    for output in (stream.getvalue(), file_text):
        assert "send failed" in output and "Traceback" in output
        assert "[REDACTED]" in output
        for name, secret in s.items():
            assert secret not in output, f"{name} leaked"
        # not even a part of the PEM body or of the JWT signature
        assert s["pem"].splitlines()[1] not in output
        assert s["jwt"].split(".")[2] not in output
        assert "PRIVATE KEY" not in output.replace("[REDACTED]", "")
    # ordinary text around the secrets survives
    assert "apns-topic" in stream.getvalue() and "expires_in" in stream.getvalue()


def test_redaction_keeps_labels_and_ordinary_text():
    registry = SecretRegistry()
    assert registry.redact("event=outcome call_id=a@b kind=delivered reason=Success") == (
        "event=outcome call_id=a@b kind=delivered reason=Success"
    )
    assert registry.redact("authorization: key=AAAAabcdefghijklmnopqrstuvwxyz") == "authorization: [REDACTED]"
    assert registry.redact("Bearer abc.def-ghi_jkl") == "Bearer [REDACTED]"
    assert registry.redact('{"password": "hunter22"}') == '{"password": "[REDACTED]"}'


def test_secret_registry_forgets_oldest_and_ignores_short():
    registry = SecretRegistry(capacity=2)
    registry.register("short")  # too short to be masked without masking words
    registry.register("first-secret-1")
    registry.register("second-secret-2")
    registry.register(b"third-secret-3")
    text = registry.redact("short first-secret-1 second-secret-2 third-secret-3")
    assert text == "short first-secret-1 [REDACTED] [REDACTED]"


def test_reopen_after_logrotate_rename(logging_to, tmp_path):
    handle, _ = logging_to()
    log = logging.getLogger("sidecar.test")
    log.info("before rotation")
    (tmp_path / "sidecar.log").rename(tmp_path / "sidecar.log.1")
    log.info("still the old file")  # like logrotate's window before postrotate
    handle.reopen()
    log.info("after rotation")
    old = (tmp_path / "sidecar.log.1").read_text()
    new = (tmp_path / "sidecar.log").read_text()
    assert "before rotation" in old and "still the old file" in old
    assert "after rotation" in new and "before rotation" not in new


def test_reopen_failure_is_logged_not_raised(logging_to, tmp_path):
    handle, stream = logging_to()
    (tmp_path / "sidecar.log").unlink()
    (tmp_path / "sidecar.log").mkdir()  # cannot be opened as a file, even by root
    handle.reopen()
    assert "cannot reopen log file" in stream.getvalue()
    logging.getLogger("sidecar.test").info("stderr still works")
    assert "stderr still works" in stream.getvalue()


def test_format_with_and_without_journald(logging_to, monkeypatch):
    _, stream = logging_to(log_to_file=False)
    push_logger(make_push()).info("hello")
    line = stream.getvalue().strip()
    assert line.endswith("INFO sidecar.push [call-1@example.com r-1] hello")
    assert line[:4].isdigit()  # a timestamp first

    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    _, stream = logging_to(log_to_file=False)
    logging.getLogger("sidecar.x").warning("no context")
    assert stream.getvalue() == "WARNING sidecar.x no context\n"


def test_setup_again_replaces_handlers(logging_to):
    logging_to(log_to_file=False)
    _, stream = logging_to(log_to_file=False, debug=False, debug_hpack=False)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_pushsidecar_handler", False)]
    assert len(ours) == 1
    logging.getLogger("sidecar.x").debug("hidden")
    logging.getLogger("hpack").info("hidden too (hpack only when debug_hpack)")
    assert stream.getvalue() == ""


def test_push_lines_round_trip(logging_to):
    _, stream = logging_to(log_to_file=False)
    push = make_push(from_uri='Evil "name"\nINFO forged line')
    log_received(push, "zmq", "ipc:///run/pushsidecar/push.sock")
    log_attempt(push, 1, "https://api.push.apple.com/3/device/x", 429, "TooManyRequests", seconds=0.0123)
    log_outcome(push, Outcome(OutcomeKind.FAILED, 503, "gave up: 3 attempts", attempts=3))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, "a newline in a value must not break the line"
    received, attempt, outcome = (parse_fields(line) for line in lines)
    assert received["event"] == "received" and received["source"] == "zmq"
    assert received["from"] == 'Evil "name"\nINFO forged line'
    assert received["token"] == "a1b2c3d4..."  # a hint, never the whole token
    assert attempt == {**attempt, "attempt": "1", "status": "429", "seconds": "0.012"}
    assert outcome["kind"] == "failed" and outcome["reason"] == "gave up: 3 attempts"
    assert outcome["call_id"] == "call-1@example.com" and outcome["request_id"] == "r-1"
    assert lines[2].split()[2] == "WARNING"  # failed outcomes are warnings


def test_format_value_quotes_only_when_needed():
    assert obslog.format_value("Success") == "Success"
    assert obslog.format_value("") == '""'
    assert obslog.format_value(None) == "-"
    assert obslog.format_value("a b") == '"a b"'
    assert obslog.format_value("k=v") == '"k=v"'
    assert parse_fields(obslog.format_fields([("a", "x y"), ("b", 'q"'), ("c", 3)])) == {
        "a": "x y", "b": 'q"', "c": "3"}


def _record(msg="event=x a=1", *, call_id="c-1", exc_info=None, created=1_700_000_000.123):
    record = logging.LogRecord("sidecar.push", logging.INFO, __file__, 1, msg, None, exc_info)
    record.created, record.msecs = created, 123.0
    if call_id is not None:
        record.call_id, record.request_id = call_id, "r-1"
    return record


@pytest.mark.parametrize("timestamps", [True, False])
@pytest.mark.parametrize("call_id", ["c-1", None])
def test_context_formatter_writes_what_the_stdlib_formatter_writes(timestamps, call_id):
    fmt = "%(levelname)s %(name)s %(context)s%(message)s"
    if timestamps:
        fmt = "%(asctime)s.%(msecs)03d " + fmt
    reference = logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        exc_info = sys.exc_info()
    for exc in (None, exc_info):
        ours = obslog.ContextFormatter(timestamps=timestamps).format(_record(call_id=call_id, exc_info=exc))
        theirs_record = _record(call_id=call_id, exc_info=exc)
        theirs_record.context = f"[{call_id} r-1] " if call_id else ""
        assert ours == reference.format(theirs_record)


def test_context_formatter_time_cache_follows_the_second():
    formatter = obslog.ContextFormatter(timestamps=True)
    first = formatter.format(_record(created=1_700_000_000.5))
    same_second = formatter.format(_record(created=1_700_000_000.9))
    next_second = formatter.format(_record(created=1_700_000_001.1))
    assert first[:19] == same_second[:19] != next_second[:19]
    assert next_second[:19] == logging.Formatter(datefmt="%Y-%m-%d %H:%M:%S").formatTime(
        _record(created=1_700_000_001.1), "%Y-%m-%d %H:%M:%S")


def test_second_handler_reuses_the_text_only_for_the_same_format():
    record = _record()
    with_time = obslog.ContextFormatter(timestamps=True).format(record)
    without = obslog.ContextFormatter(timestamps=False).format(record)
    assert without == "INFO sidecar.push [c-1 r-1] event=x a=1"
    assert with_time.endswith(without) and with_time != without
    assert obslog.ContextFormatter(timestamps=True).format(record) == with_time


@pytest.mark.parametrize("count", [1, 20])
def test_registered_secrets_are_masked_with_few_or_many(count):
    registry = SecretRegistry()
    values = [f"secret-value-{i:04d}-xyz" for i in range(count)]
    for value in values:
        registry.register(value)
    assert registry.redact(f"a {values[-1]} b {values[0]}") == f"a {obslog.MASK} b {obslog.MASK}"
    assert registry.redact("nothing here") == "nothing here"
    registry.clear()
    assert registry.redact(values[0]) == values[0]


def test_push_lines_match_format_fields_of_their_pairs(logging_to):
    _, stream = logging_to(log_to_file=False)
    push = make_push(device_id=None, from_uri="sip:a b@x")
    log_received(push, "http", None)
    log_outcome(push, Outcome(OutcomeKind.DELIVERED, 200, None, url="https://h/3/device/x", attempts=1))
    received, outcome = (line.split("] ", 1)[1] for line in stream.getvalue().splitlines())
    assert received == obslog.format_fields([
        ("event", "received"), ("call_id", push.call_id), ("request_id", push.request_id),
        ("source", "http"), ("peer", None), ("app", push.app_id), ("platform", push.platform),
        ("device", None), ("token", "a1b2c3d4..."), ("push_event", "incoming_session"),
        ("from", "sip:a b@x"), ("to", push.to_uri)])
    assert outcome == obslog.format_fields([
        ("event", "outcome"), ("call_id", push.call_id), ("request_id", push.request_id),
        ("app", push.app_id), ("platform", push.platform), ("device", None), ("kind", "delivered"),
        ("code", 200), ("reason", None), ("attempts", 1), ("url", "https://h/3/device/x")])


def test_repeated_values_cache_is_bounded_and_exact():
    obslog._repeated.clear()
    for i in range(obslog._REPEATED_MAX + 5):
        assert obslog._repeated_value(f"v{i}") == f"v{i}"
    assert len(obslog._repeated) <= obslog._REPEATED_MAX
    assert obslog._repeated_value(None) == "-"
    assert obslog._repeated_value("a b") == '"a b"'


def test_push_records_from_the_template_are_like_records_made_by_logging():
    import threading
    import time as time_module

    from sidecar.observe import log as log_module

    target = logging.getLogger("sidecar.push.template-test")
    first = log_module._push_record(target, logging.INFO, "one")  # made the usual way
    time_module.sleep(0.002)
    second = log_module._push_record(target, logging.WARNING, "two")  # copied from the first
    usual = target.makeRecord(target.name, logging.WARNING, log_module._THIS_FILE,
                              log_module._RECORD_LINE, "two", (), None, "_emit_text", None, None)
    assert type(second) is type(usual)
    assert set(vars(second)) == set(vars(usual))
    for name in vars(usual):
        if name not in ("created", "msecs", "relativeCreated"):
            assert getattr(second, name) == getattr(usual, name), name
    assert (second.levelname, second.getMessage(), first.getMessage()) == ("WARNING", "two", "one")
    assert first.created < second.created <= usual.created
    assert second.msecs == int((second.created - int(second.created)) * 1000)
    assert second.thread == threading.get_ident()
    # Another record factory (a test's capture) gets records made the usual way.
    made = []
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *a, **k: made.append(a) or previous(*a, **k))
    try:
        log_module._push_record(target, logging.INFO, "three")
    finally:
        logging.setLogRecordFactory(previous)
    assert len(made) == 1
