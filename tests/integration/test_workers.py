"""``workers = 2``: the daemon as a supervisor of two worker processes.

The real command against the simulator of this test's trio loop: both
workers answer HTTP on one port, ZeroMQ frames are routed so duplicates
still meet, one APNs token serves both, /metrics adds them up, SIGHUP and
SIGTERM reach both, a killed worker is replaced, and sd_notify READY comes
once both are ready.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import trio

from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator
from sidecar.wire import Sender, encode_direct

from sidecar_fixtures import TOKEN, sidecar_config
from test_daemon import (
    START_TIMEOUT, apple_app_id, daemon_env, device_records, metric_value, push_body,
    run_daemon_to_exit, running_daemon, set_server_options, short_socket_dir, wait_until, zmq_endpoint,
)


def worker_pids(supervisor_pid: int) -> set[int]:
    children = set()
    for task in Path(f"/proc/{supervisor_pid}/task").iterdir():
        children.update(int(pid) for pid in (task / "children").read_text().split())
    return children


def request_pids(text: str, source: str) -> set[str]:
    """Process ids (hex, the request id's prefix) that received pushes from ``source``."""
    return set(re.findall(rf"event=received call_id=\S+ request_id=([0-9a-f]+)-\S+ source={source} ", text))


def workers_config(tmp_path: Path, creds: SimCredentials, sim_port: int) -> Path:
    config_dir = sidecar_config(tmp_path, creds, sim_port)
    set_server_options(config_dir, workers="2", http_server="fast", log_to_file="true",
                       log_file=str(tmp_path / "sidecar.log"))
    return config_dir


async def test_two_workers_share_port_zmq_token_metrics_and_signals(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = workers_config(tmp_path, sim_credentials, sim.port)
    app_id = apple_app_id(sim_credentials)
    log = tmp_path / "sidecar.log"
    async with running_daemon(config_dir, tmp_path) as daemon:
        await wait_until(lambda: len(worker_pids(daemon.process.pid)) == 2, "two workers", START_TIMEOUT)
        await daemon.wait_for_output(r"supervisor: 2 workers ready", timeout=START_TIMEOUT)
        # HTTP: new connections spread over both workers (SO_REUSEPORT).
        for n in range(40):
            async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
                answer = await http.post("/push", json=push_body(app_id, f"w-http-{n}"))
                assert answer.status_code == 200, answer.text
        assert len(request_pids(log.read_text(), "http")) == 2
        # ZeroMQ: 60 calls, each sent twice; every call delivered exactly once.
        sender = Sender(zmq_endpoint(tmp_path))
        try:
            for n in range(60):
                frame = encode_direct("incoming_session", f"w-zmq-{n}", "sip:a@example.com",
                                      "sip:b@example.com", app_id=app_id, platform="apple", token=TOKEN,
                                      media_type="audio", sent_at=time.time(), ttl=30)
                assert sender.send(frame) and sender.send(frame)
            await wait_until(lambda: len(device_records(sim)) >= 100, "100 pushes at the simulator", 30)
            await trio.sleep(0.5)  # a duplicate slipping through would show up by now
        finally:
            sender.close()
        calls = [str(r.get("body", {}).get("call-id")) for r in device_records(sim)]
        assert sorted(calls) == sorted([f"w-http-{n}" for n in range(40)] + [f"w-zmq-{n}" for n in range(60)])
        assert len(request_pids(log.read_text(), "zmq")) == 2  # routed to both workers
        # One provider token for both workers.
        tokens = {(r["jwt"]["header"]["kid"], r["jwt"]["claims"]["iat"]) for r in device_records(sim)}
        assert len(tokens) == 1, tokens
        # /metrics adds both workers up (each publishes every second).
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            def delivered(text: str) -> float:
                return metric_value(text, "pushsidecar_outcomes_total", app=app_id, platform="apple",
                                    outcome="delivered")

            metrics = ""
            with trio.move_on_after(10):
                while delivered(metrics) != 100:
                    metrics = (await http.get("/metrics")).text
                    await trio.sleep(0.3)
            assert delivered(metrics) == 100, metrics
            assert metric_value(metrics, "pushsidecar_zmq_rejected_frames_total", reason="duplicate") == 60
            assert metric_value(metrics, "pushsidecar_info", version=re.search(
                r'pushsidecar_info\{version="([^"]+)"', metrics).group(1)) == 1
        # SIGHUP reaches both workers.
        daemon.send_signal(signal.SIGHUP)
        await wait_until(lambda: log.read_text().count("configuration reloaded (SIGHUP)") == 2,
                         "both workers reloaded")
        # A killed worker is replaced.
        victim = min(worker_pids(daemon.process.pid))
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: victim not in worker_pids(daemon.process.pid)
                         and len(worker_pids(daemon.process.pid)) == 2, "a new worker", START_TIMEOUT)
        await daemon.wait_for_output(r"worker \d \(pid \d+\) exited")
        await wait_until(lambda: log.read_text().count("pushsidecar ready: http") == 3,
                         "the new worker ready", START_TIMEOUT)
        pids = worker_pids(daemon.process.pid)
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.text()
        assert log.read_text().count("sidecar.service stopped") >= 2
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        assert "Traceback" not in daemon.text(), daemon.text()


async def test_ready_once_both_workers_are_ready_and_watchdog_while_alive(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = workers_config(tmp_path, sim_credentials, sim.port)
    path = short_socket_dir(tmp_path) / "notify.sock"
    messages: list[list[str]] = []
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(str(path))

        async def receive() -> None:
            while True:
                messages.append((await sock.recv(4096)).decode().split("\n"))

        def seen(key: str) -> int:
            return sum(1 for message in messages if key in message)

        env = daemon_env(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            async with running_daemon(config_dir, tmp_path, env=env) as daemon:
                await wait_until(lambda: seen("READY=1") >= 1, "READY=1", START_TIMEOUT)
                assert "supervisor: 2 workers ready" in (tmp_path / "sidecar.log").read_text()
                pings = seen("WATCHDOG=1")
                await wait_until(lambda: seen("WATCHDOG=1") >= pings + 3, "WATCHDOG=1 pings")
                daemon.send_signal(signal.SIGHUP)
                await wait_until(lambda: seen("RELOADING=1") >= 1, "RELOADING=1")
                await wait_until(lambda: seen("READY=1") >= 2, "READY=1 after the reload")
                daemon.send_signal(signal.SIGTERM)
                assert await daemon.wait_exit() == 0, daemon.text()
                await wait_until(lambda: seen("STOPPING=1") >= 1, "STOPPING=1")
            nursery.cancel_scope.cancel()
    # Only the supervisor spoke to systemd: one READY at start, one after the reload.
    assert seen("READY=1") == 2, messages


async def test_workers_refuse_a_port_in_use_with_one_line(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = workers_config(tmp_path, sim_credentials, sim.port)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another supervised sidecar
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        returncode, text = await run_daemon_to_exit(config_dir, port, tmp_path / "out.txt")
    assert returncode == 1 and "Traceback" not in text, text
    assert f"cannot listen for HTTP on 127.0.0.1:{port}: address already in use" in text
