"""An operator's first hour: start-up and reload problems as one clear line,
and log lines that say who sent a push.

The daemon runs as a real process (``pushsidecar --config-dir ...``) or, where
a test needs to look inside, in this trio loop; everything on 127.0.0.1 with
free ports and the test's own folder.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket

import httpx
import trio

from sidecar.observe.log import setup_logging
from sidecar.service import reload_config
from sidecar.wire import Sender, encode_direct

from sidecar_fixtures import TOKEN, running_sidecar, sidecar_config
from test_daemon import PUSHSIDECAR, apple_app_id, push_body, run_daemon_to_exit, running_daemon, start_daemon


def zmq_push(call_id: str, creds) -> bytes:
    return encode_direct("incoming_session", call_id, "sip:a@example.com", "sip:b@example.com",
                         app_id=apple_app_id(creds), platform="apple", token=TOKEN, media_type="audio")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line
            or line.startswith("ERROR")]


async def test_http_port_in_use_is_one_line_naming_the_process(tmp_path, sim, sim_credentials):
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        returncode, text = await run_daemon_to_exit(config_dir, port, tmp_path / "out.txt")
    assert returncode == 1, text
    assert "Traceback" not in text
    [line] = error_lines(text)
    assert f"cannot listen for HTTP on 127.0.0.1:{port}: address already in use by pid {os.getpid()}" in line


async def test_second_sidecar_refuses_the_zmq_endpoint_and_the_first_keeps_it(tmp_path, sim, sim_credentials):
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    endpoint = f"ipc://{tmp_path}/push.sock"
    async with running_daemon(config_dir, tmp_path, name="first") as first:
        second = await start_daemon(config_dir, tmp_path / "second.out")
        code = await second.wait_exit()
        text = second.text()
        assert code == 1, text
        assert "Traceback" not in text
        [line] = error_lines(text)
        assert f"ZeroMQ endpoint {endpoint} is in use by a running sidecar (pid {first.process.pid} " in line
        assert PUSHSIDECAR in line  # its command line

        # The first one still hears the proxies: a push over ZeroMQ is delivered.
        sender = Sender(endpoint)
        try:
            assert sender.send(zmq_push("still-deaf?", sim_credentials))
            with trio.fail_after(20):
                while not any("still-deaf?" in str(r.get("body")) for r in sim.requests):
                    await trio.sleep(0.05)
        finally:
            sender.close()


async def test_a_stale_ipc_socket_file_is_replaced(tmp_path, sim, sim_credentials):
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    path = tmp_path / "push.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file with nobody listening (a killed process's)
    stale.close()
    assert path.is_socket()
    async with running_daemon(config_dir, tmp_path) as daemon:
        await daemon.wait_for_output(r"removed stale socket file " + re.escape(str(path)))
        await daemon.wait_for_output(r"zmq ingress: listening on ipc://")


async def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path, sim, sim_credentials):
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    (tmp_path / "push.sock").write_text("not a socket\n")
    daemon = await start_daemon(config_dir, tmp_path / "out.txt")
    assert await daemon.wait_exit() == 1
    [line] = error_lines(daemon.text())
    assert f"{tmp_path / 'push.sock'} exists and is not a socket" in line
    assert (tmp_path / "push.sock").read_text() == "not a socket\n"


async def test_missing_config_folder_is_one_line(tmp_path):
    process = await trio.run_process([PUSHSIDECAR, "--config-dir", str(tmp_path / "nope")],
                                     capture_stdout=True, capture_stderr=True, check=False)
    assert process.returncode == 2
    err = process.stderr.decode()
    assert f"config folder {tmp_path / 'nope'} does not exist" in err and "Traceback" not in err


async def test_reload_that_changes_what_is_listened_on_says_a_restart_is_needed(
    tmp_path, sim, sim_credentials, caplog,
):
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    async with running_sidecar(config_dir) as handle:
        runtime = handle.runtime
        general = config_dir / "general.ini"
        text = general.read_text()
        text = re.sub(r"(?m)^port = .*$", "port = 18443", text)
        text = text.replace(f"endpoint = ipc://{tmp_path}/push.sock", "endpoint = tcp://127.0.0.1:5999")
        general.write_text(text)
        with caplog.at_level(logging.INFO, logger="sidecar.service"):
            assert reload_config(runtime, config_dir, reason="test")
        [record] = [r for r in caplog.records if "configuration reloaded" in r.getMessage()]
        message = record.getMessage()
        assert record.levelno == logging.WARNING
        assert "not applied until a restart" in message
        assert "[server] port 0 -> 18443" in message
        assert f"[zmq] endpoint ipc://{tmp_path}/push.sock -> tcp://127.0.0.1:5999" in message
        # Still serving where it was.
        assert runtime.settings.port == 0 and runtime.settings.zmq_endpoint.startswith("ipc://")
        async with httpx.AsyncClient(base_url=handle.http_url) as http:
            assert (await http.get("/health")).status_code == 200

        caplog.clear()
        general.write_text(text.replace("port = 18443", "port = 0"))
        general.write_text(general.read_text().replace("endpoint = tcp://127.0.0.1:5999",
                                                       f"endpoint = ipc://{tmp_path}/push.sock"))
        with caplog.at_level(logging.INFO, logger="sidecar.service"):
            assert reload_config(runtime, config_dir, reason="test")
        [record] = [r for r in caplog.records if "configuration reloaded" in r.getMessage()]
        assert record.levelno == logging.INFO and "restart" not in record.getMessage()


async def test_log_lines_name_the_peer_and_debug_keeps_protocol_internals_quiet(
    tmp_path, sim, sim_credentials,
):
    stream = io.StringIO()
    handle_log = setup_logging(debug=True, log_to_file=False, log_file=None, debug_hpack=False,
                               stream=stream)
    try:
        config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
        async with running_sidecar(config_dir) as handle:
            async with httpx.AsyncClient(base_url=handle.http_url) as http:
                answer = await http.post("/push", json=push_body(apple_app_id(sim_credentials), "peer-http"))
                assert answer.status_code == 200, answer.text
            sender = Sender(handle.zmq_endpoint)
            try:
                assert sender.send(zmq_push("peer-zmq", sim_credentials))
                with trio.fail_after(20):
                    while "event=outcome call_id=peer-zmq" not in stream.getvalue():
                        await trio.sleep(0.05)
            finally:
                sender.close()
    finally:
        handle_log.close()
    text = stream.getvalue()
    http_line = next(line for line in text.splitlines() if "event=received call_id=peer-http" in line)
    assert re.search(r" peer=127\.0\.0\.1:\d+ ", http_line), http_line
    zmq_line = next(line for line in text.splitlines() if "event=received call_id=peer-zmq" in line)
    assert f" peer=ipc://{tmp_path}/push.sock " in zmq_line, zmq_line
    # --debug shows our request headers and body ...
    assert re.search(r"event=request call_id=peer-http .*headers=.*apns-push-type.* body=", text)
    # ... and not the HTTP/2 libraries' frames and header coding.
    noisy = [line for line in text.splitlines()
             if re.match(r"(\S+ \S+ )?DEBUG (hpack|h2|hyperframe|httpcore|h11)[. ]", line)]
    assert noisy == []


def test_debug_hpack_lets_the_protocol_loggers_through():
    handle = setup_logging(debug=True, log_to_file=False, log_file=None, debug_hpack=False, stream=io.StringIO())
    try:
        assert logging.getLogger("sidecar.dispatch").isEnabledFor(logging.DEBUG)
        for name in ("hpack", "h2", "httpcore", "hyperframe"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG)
            assert logging.getLogger(name).isEnabledFor(logging.WARNING)
    finally:
        handle.close()
    handle = setup_logging(debug=False, log_to_file=False, log_file=None, debug_hpack=True, stream=io.StringIO())
    try:
        assert all(logging.getLogger(n).isEnabledFor(logging.DEBUG) for n in ("hpack", "h2", "httpcore"))
    finally:
        handle.close()
