"""``pushsidecar trace``: the story of one call, read back from a log."""

from __future__ import annotations

import argparse
import io

import pytest

from sidecar.model import Event, Outcome, OutcomeKind, Push
from sidecar.observe import trace
from sidecar.observe.log import log_attempt, log_outcome, log_received, push_logger, setup_logging

CALL = "7f3a-call@pbx.example.com"


def make_push(device: str, request_id: str, call_id: str = CALL) -> Push:
    return Push(
        app_id="com.example.app", platform="apple", token=f"{device}-token-0123456789",
        event=Event.INCOMING_SESSION, call_id=call_id, from_uri="alice@example.com",
        to_uri="bob@example.com", deadline=0.0, expires_at=0.0, device_id=device,
        request_id=request_id, source="zmq",
    )


@pytest.fixture
def real_log(tmp_path, monkeypatch):
    """A log file written by the real logging setup: two devices of CALL
    (one delivered after a retry, one dead) and another call in between."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    path = tmp_path / "sidecar.log"
    handle = setup_logging(debug=False, log_to_file=True, log_file=path, debug_hpack=False,
                           stream=io.StringIO())
    try:
        phone, tablet, other = make_push("phone", "r-1"), make_push("tablet", "r-2"), make_push(
            "pc", "r-9", call_id="other-call@x")
        url = "https://api.push.apple.com/3/device/"
        log_received(phone, "zmq", "ipc:///run/pushsidecar/push.sock")
        log_received(tablet, "zmq", "ipc:///run/pushsidecar/push.sock")
        log_received(other, "http", "10.0.0.1")
        log_attempt(phone, 1, url + "x", 503, "ServiceUnavailable", seconds=0.02)
        log_attempt(tablet, 1, url + "y", 410, "Unregistered")
        log_outcome(tablet, Outcome(OutcomeKind.TOKEN_DEAD, 410, "Unregistered", attempts=1))
        push_logger(phone, "sidecar.dispatch").info("retrying in 0.5 s")
        log_attempt(phone, 2, url + "x", 200, "Success")
        log_outcome(phone, Outcome(OutcomeKind.DELIVERED, 200, "Success", attempts=2))
        log_outcome(other, Outcome(OutcomeKind.DELIVERED, 200, "Success", attempts=1))
    finally:
        handle.close()
    return path


def run(argv: list[str], stdin: io.StringIO | None = None) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    trace.add_trace_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    status = args.func(args, stdin=stdin, out=out)
    return status, out.getvalue()


def test_story_of_one_call_from_a_file(real_log):
    status, text = run(["trace", CALL, "--log", str(real_log)])
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == f"call {CALL}"
    body = lines[1:-1]
    # 2 received, 3 attempts, 2 outcomes, 1 note, in time order; nothing of the other call
    assert "other-call" not in text and "r-9" not in text
    kinds = [line.split()[1] for line in body]
    assert kinds == ["received", "received", "attempt", "attempt", "outcome", "info",
                     "attempt", "outcome"], text
    assert "received   req=r-1 device=phone from zmq (ipc:///run/pushsidecar/push.sock)" in body[0]
    assert "incoming_session for com.example.app/apple" in body[0]
    assert "token=phone-to..." in body[0]
    assert any("attempt 1  req=r-1 device=phone -> 503 ServiceUnavailable" in line for line in body)
    assert any("outcome    req=r-2 device=tablet TOKEN_DEAD code=410" in line for line in body)
    assert any("retrying in 0.5 s" in line for line in body)
    assert "DELIVERED code=200 attempts=2 Success" in body[-1]
    assert lines[-1] == "summary: 2 push(es) received; delivered 1, token_dead 1"


def test_from_stdin_and_a_missing_outcome(real_log):
    lines = real_log.read_text().splitlines(keepends=True)
    without_last_outcome = "".join(line for line in lines
                                   if not ("event=outcome" in line and "request_id=r-1" in line))
    status, text = run(["trace", CALL, "--log", "-"], stdin=io.StringIO(without_last_outcome))
    assert status == 0
    assert text.splitlines()[-1] == (
        "summary: 2 push(es) received; token_dead 1; NO OUTCOME (yet) for r-1")


def test_journalctl_format_and_dispatcher_lines():
    # journalctl -o short-iso-precise lines (no timestamp of ours), given out
    # of order as if two rotated files were concatenated, plus a line in the
    # dispatcher's own format (no [call_id request_id] tag).
    journal = (
        f"2024-05-01T12:00:01.500000+00:00 host pushsidecar[42]: INFO sidecar.push [{CALL} r-5] "
        f"event=outcome call_id={CALL} request_id=r-5 app=a platform=firebase device=d kind=rejected "
        'code=400 reason="Invalid registration" attempts=1 url=-\n'
        f"2024-05-01T12:00:01.000000+00:00 host pushsidecar[42]: INFO sidecar.dispatch "
        f"event=received call_id={CALL} request_id=r-5 source=http app=a platform=firebase device=d "
        "push_event=cancel\n"
        "2024-05-01T12:00:01.200000+00:00 host pushsidecar[42]: INFO sidecar.push [x-call r-6] "
        "event=received call_id=x-call request_id=r-6 note=mentions-" + CALL + "\n"
    )
    status, text = run(["trace", CALL], stdin=io.StringIO(journal))
    assert status == 0
    body = text.splitlines()
    assert body[1].split()[:2] == ["12:00:01.000", "received"]
    assert "from http: cancel for a/firebase" in body[1]
    assert body[2].split()[:2] == ["12:00:01.500", "outcome"]
    assert "REJECTED code=400 attempts=1 Invalid registration" in body[2]
    assert "r-6" not in text  # mentions the call-id, but is about another call
    assert body[-1] == "summary: 1 push(es) received; rejected 1"


def test_unknown_call_and_missing_file(tmp_path, real_log, capsys):
    status, text = run(["trace", "no-such-call", "--log", str(real_log)])
    assert status == 1 and text == "call no-such-call: nothing in the log\n"
    status, _ = run(["trace", CALL, "--log", str(tmp_path / "missing.log")])
    assert status == 2
    assert "missing.log" in capsys.readouterr().err


def test_input_choice(monkeypatch, tmp_path):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(trace.shutil, "which", lambda name: None)
    with pytest.raises(LookupError):
        trace.open_input(None, Tty())
    _, source = trace.open_input(None, io.StringIO(""))
    assert source == "stdin"
    monkeypatch.setattr(trace.shutil, "which", lambda name: "/usr/bin/journalctl")
    _, source = trace.open_input(None, Tty())
    assert source == "journalctl -u pushsidecar"


def test_pushsidecar_trace_command_line(real_log, capsys):
    from sidecar.cli import build_parser, main

    try:
        build_parser()
    except ImportError as exc:  # the CLI imports modules written by others, maybe unfinished
        pytest.skip(f"sidecar.cli cannot be built yet: {exc}")
    assert main(["trace", CALL, "--log", str(real_log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"call {CALL}\n") and "summary: 2 push(es) received" in out
