"""The daemon as an operator runs it: ``pushsidecar --config-dir DIR --port P``.

Each test starts the real command as a subprocess (its stdout and stderr go
to one file in tmp_path) against the simulator running in this test's trio
loop, then talks to it over HTTP, signals and the sd_notify socket, and reads
what it logged.  Waiting is always polling for a condition under a generous
deadline, never a fixed sleep, so a loaded machine only makes tests slower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from collections.abc import AsyncIterator, Callable

import httpx
import trio

from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator
from sidecar.wire import Sender, encode_direct

from sidecar_fixtures import TOKEN, sidecar_config

BIN = Path(sys.executable).parent
PUSHSIDECAR = str(BIN / "pushsidecar")
#: generous: the machine may be loaded, and a slow start is not a failure
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
RELOAD_TIMEOUT = 15.0


# -- helpers shared with test_reload.py ---------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now (bound to 127.0.0.1:0, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment of a daemon: ours, without systemd's variables unless given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def run_daemon_to_exit(config_dir: Path, port: int, output: Path) -> tuple[int, str]:
    """Run ``pushsidecar`` on 127.0.0.1:``port`` until it exits (a start-up
    error); return its exit status and everything it printed."""
    with open(output, "wb") as sink:
        process = await trio.run_process(
            [PUSHSIDECAR, "--config-dir", str(config_dir), "--ip", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=daemon_env(), check=False)
    return process.returncode, output.read_text()


@dataclasses.dataclass
class Daemon:
    """A running ``pushsidecar`` process and where its output goes."""

    process: trio.Process
    port: int
    output: Path
    config_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        """Everything it wrote so far (stdout and stderr)."""
        return self.output.read_text(encoding="utf-8", errors="replace")

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_for_output(self, pattern: str, *, after: int = 0,
                              timeout: float = RELOAD_TIMEOUT) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the output past offset ``after``."""
        regex = re.compile(pattern)
        with trio.move_on_after(timeout):
            while True:
                match = regex.search(self.text(), after)
                if match:
                    return match
                if self.process.returncode is not None:
                    break
                await trio.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the daemon's output "
                             f"(exit {self.process.returncode}):\n{self.text()[after:]}")

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        with trio.move_on_after(timeout):
            return await self.process.wait()
        raise AssertionError(f"the daemon did not exit within {timeout} s:\n{self.text()}")

    async def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            with trio.move_on_after(timeout):
                while self.process.returncode is None:
                    try:
                        answer = await http.get("/health")
                    except httpx.TransportError:
                        await trio.sleep(0.1)
                        continue
                    assert answer.status_code == 200, answer.text
                    return
        raise AssertionError(f"no /health (exit {self.process.returncode}):\n{self.text()}")


async def start_daemon(config_dir: Path, output: Path, *, env: dict[str, str] | None = None,
                       args: tuple[str, ...] = ()) -> Daemon:
    port = free_port()
    with open(output, "ab") as sink:
        process = await trio.lowlevel.open_process(
            [PUSHSIDECAR, "--config-dir", str(config_dir), "--port", str(port), *args],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            env=env or daemon_env(),
        )
    return Daemon(process, port, output, config_dir)


@contextlib.asynccontextmanager
async def running_daemon(config_dir: Path, tmp_path: Path, *, env: dict[str, str] | None = None,
                         name: str = "daemon") -> AsyncIterator[Daemon]:
    """Start the daemon, wait for ``/health``, kill it on the way out if still running."""
    daemon = await start_daemon(config_dir, tmp_path / f"{name}.out", env=env)
    try:
        await daemon.wait_healthy()
        yield daemon
    finally:
        if daemon.process.returncode is None:
            daemon.process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await daemon.process.wait()


def zmq_endpoint(tmp_path: Path) -> str:
    """Where sidecar_config() binds the daemon's ZeroMQ socket."""
    return f"ipc://{tmp_path}/push.sock"


def apple_app_id(creds: SimCredentials) -> str:
    return f"{creds.token_bundle_id}.prod"


def push_body(app_id: str, call_id: str, *, platform: str = "apple", token: str = TOKEN,
              event: str = "incoming_session") -> dict:
    return {
        "app-id": app_id, "platform": platform, "token": token, "call-id": call_id,
        "from": "sip:alice@example.com", "to": "sip:bob@example.com", "event": event,
        "media-type": "audio", "silent": True, "from-display-name": "Alice",
    }


def device_records(sim: Simulator) -> list[dict]:
    """What the simulator recorded of pushes (APNs and FCM, not OAuth)."""
    return [r for r in sim.requests if r["path"].startswith(("/3/device/", "/v1/"))]


def records_of_call(sim: Simulator, call_id: str) -> list[dict]:
    return [r for r in device_records(sim) if (r.get("body") or {}).get("call-id") == call_id
            or call_id in str(r.get("body"))]


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = RELOAD_TIMEOUT) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def set_server_options(config_dir: Path, **options: str) -> None:
    """Set options of general.ini's [server] section (replacing existing ones)."""
    general = config_dir / "general.ini"
    text = general.read_text()
    for option, value in options.items():
        text, count = re.subn(rf"(?m)^{option} = .*$", f"{option} = {value}", text)
        if not count:
            text = text.replace("[server]\n", f"[server]\n{option} = {value}\n", 1)
    general.write_text(text)


# -- start, push, stop ---------------------------------------------------------------


async def test_start_health_push_metrics_and_clean_stop(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            health = await http.get("/health")
            assert health.status_code == 200 and health.json()["code"] == 200
            answer = await http.post("/push", json=push_body(apple_app_id(sim_credentials), "d-call-1"))
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"]["call_id"] == "d-call-1"
            [record] = device_records(sim)
            assert record["status"] == 200 and record["path"] == f"/3/device/{TOKEN}"
            metrics = (await http.get("/metrics")).text
        assert metric_value(metrics, "pushsidecar_outcomes_total", app=apple_app_id(sim_credentials),
                            platform="apple", outcome="delivered") == 1
        assert metric_value(metrics, "pushsidecar_pushes_in_flight") == 0
        await daemon.wait_for_output(r"pushsidecar ready: http ")
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0
        out = daemon.text()
        assert "received SIGTERM" in out and "stopped" in out
        assert "Traceback" not in out, out


async def test_sigterm_with_pushes_in_flight_answers_every_push(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    app_id = apple_app_id(sim_credentials)
    in_flight = 8
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            # A first success lifts the simulator's one-stream limit (as Apple does).
            assert (await http.post("/push", json=push_body(app_id, "warm"))).status_code == 200
            sim.delay = 1.5
            answers: dict[str, int | str] = {}

            async def send(call_id: str) -> None:
                try:
                    reply = await http.post("/push", json=push_body(app_id, call_id))
                    answers[call_id] = reply.status_code
                except httpx.HTTPError as exc:
                    answers[call_id] = repr(exc)

            call_ids = [f"flight-{i}" for i in range(in_flight)]
            # Two more over ZeroMQ (the proxies' path): no answer, only an outcome line.
            zmq_call_ids = ["flight-zmq-0", "flight-zmq-1"]
            sender = Sender(zmq_endpoint(tmp_path))
            for call_id in zmq_call_ids:
                assert sender.send(encode_direct(
                    "incoming_session", call_id, "sip:a@example.com", "sip:b@example.com",
                    app_id=app_id, platform="apple", token=TOKEN, media_type="audio"))
            async with trio.open_nursery() as nursery:
                for call_id in call_ids:
                    nursery.start_soon(send, call_id)
                # Stop once every push reached the simulator and waits for its answer.
                total = 1 + in_flight + len(zmq_call_ids)
                await wait_until(lambda: len(device_records(sim)) >= total,
                                 "the pushes to reach the simulator")
                stopping_at = trio.current_time()
                daemon.send_signal(signal.SIGTERM)
                assert await daemon.wait_exit() == 0, daemon.text()
                assert trio.current_time() - stopping_at < 10
    out = daemon.text()
    outcome_lines = out.count("event=outcome")
    for call_id in call_ids:
        answered = answers.get(call_id) == 200
        logged = re.search(rf"event=outcome call_id={re.escape(call_id)} .*kind=delivered", out)
        assert answered or logged, (call_id, answers.get(call_id), out)
    for call_id in zmq_call_ids:
        assert re.search(rf"event=outcome call_id={re.escape(call_id)} .*kind=delivered", out), out
    sender.close()
    # Nothing lost: the client got every answer, and the log has every outcome.
    assert sorted(answers.values(), key=str) == [200] * in_flight, answers
    assert outcome_lines == total, out
    assert "stopping: " in out and "stopped" in out
    assert "Traceback" not in out, out


def test_python_m_sidecar_help() -> None:
    done = subprocess.run([sys.executable, "-m", "sidecar", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: pushsidecar" in done.stdout
    for command in ("check-config", "trace", "simulate"):
        assert command in done.stdout


def break_applications_ini(config_dir: Path) -> None:
    """An invalid value for one option of one application."""
    apps = config_dir / "applications.ini"
    apps.write_text(apps.read_text().replace("app_platform = firebase", "app_platform = nokia", 1))


def test_check_config_exit_codes(tmp_path: Path, sim_credentials: SimCredentials) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, 443)
    good = subprocess.run([PUSHSIDECAR, "check-config", "--config-dir", str(config_dir)],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "configuration OK" in good.stdout and "3 application(s)" in good.stdout

    break_applications_ini(config_dir)
    bad = subprocess.run([PUSHSIDECAR, "check-config", "--config-dir", str(config_dir)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    # The message names the file, the section and the option.
    assert "applications.ini" in bad.stderr, bad.stderr
    assert "[sylk-firebase]" in bad.stderr and "app_platform" in bad.stderr, bad.stderr

    # A broken general.ini too: file, section, option.
    (config_dir / "applications.ini").write_text("")
    set_server_options(config_dir, port="not-a-port")
    bad = subprocess.run([PUSHSIDECAR, "check-config", "--config-dir", str(config_dir)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "general.ini" in bad.stderr and "[server]" in bad.stderr and "port" in bad.stderr, bad.stderr


async def test_bad_config_makes_the_daemon_exit_2(tmp_path: Path, sim_credentials: SimCredentials) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, 443)
    break_applications_ini(config_dir)
    daemon = await start_daemon(config_dir, tmp_path / "daemon.out")
    assert await daemon.wait_exit(START_TIMEOUT) == 2
    out = daemon.text()
    assert "configuration errors" in out
    assert "[sylk-firebase]" in out and "app_platform" in out, out
    assert "Traceback" not in out, out


async def test_unusable_credentials_make_the_daemon_exit_2(
    tmp_path: Path, sim_credentials: SimCredentials
) -> None:
    # Valid ini syntax, but the .p8 file is not a key: found only when the
    # services are built, still a configuration error (exit 2, no traceback).
    config_dir = sidecar_config(tmp_path, sim_credentials, 443)
    bogus = tmp_path / "bogus.p8"
    bogus.write_text("not a key\n")
    apps = config_dir / "applications.ini"
    apps.write_text(apps.read_text().replace(f"apple_key = {sim_credentials.apns_key_file}",
                                             f"apple_key = {bogus}", 1))
    daemon = await start_daemon(config_dir, tmp_path / "daemon.out")
    assert await daemon.wait_exit(START_TIMEOUT) == 2, daemon.text()
    out = daemon.text()
    assert "configuration errors" in out and "[sylk-apple]" in out, out
    assert "Traceback" not in out, out


# -- systemd -------------------------------------------------------------------------


def short_socket_dir(tmp_path: Path) -> Path:
    """tmp_path, or a shorter folder when an AF_UNIX path there would be too long."""
    if len(str(tmp_path / "notify.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="psc-"))


async def test_systemd_ready_watchdog_reloading_stopping(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    path = short_socket_dir(tmp_path) / "notify.sock"
    messages: list[list[str]] = []
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(str(path))

        async def receive() -> None:
            while True:
                data = await sock.recv(4096)
                messages.append(data.decode().split("\n"))

        def seen(key: str) -> int:
            return sum(1 for message in messages if key in message)

        def index_of(key: str, start: int = 0) -> int:
            for i, message in enumerate(messages[start:], start):
                if key in message:
                    return i
            return -1

        env = daemon_env(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="200000")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            async with running_daemon(config_dir, tmp_path, env=env) as daemon:
                await wait_until(lambda: seen("READY=1") >= 1, "READY=1", START_TIMEOUT)
                # Pings every 0.1 s (half of WATCHDOG_USEC): a few of them soon.
                pings = seen("WATCHDOG=1")
                await wait_until(lambda: seen("WATCHDOG=1") >= pings + 5, "WATCHDOG=1 pings")

                mark = len(messages)
                daemon.send_signal(signal.SIGHUP)
                await wait_until(lambda: index_of("RELOADING=1", mark) >= 0, "RELOADING=1")
                reloading = index_of("RELOADING=1", mark)
                assert any(a.startswith("MONOTONIC_USEC=") for a in messages[reloading])
                await wait_until(lambda: index_of("READY=1", reloading) >= 0, "READY=1 after the reload")
                await daemon.wait_for_output(r"configuration reloaded \(SIGHUP\)")

                mark = len(messages)
                daemon.send_signal(signal.SIGTERM)
                assert await daemon.wait_exit() == 0, daemon.text()
                await wait_until(lambda: index_of("STOPPING=1", mark) >= 0, "STOPPING=1")
            nursery.cancel_scope.cancel()
    # READY=1 came before any ping would matter, and exactly once at start.
    first_ready = index_of("READY=1")
    assert first_ready >= 0
    assert index_of("READY=1") < index_of("STOPPING=1")


# -- logging -------------------------------------------------------------------------


def all_access_tokens(sim: Simulator) -> list[str]:
    """The OAuth access tokens the simulator issued (what the sidecar holds)."""
    return list(sim.access_tokens._grants)


async def test_debug_log_file_trace_logrotate_and_no_secrets(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    log_file = tmp_path / "log" / "pushsidecar.log"
    log_file.parent.mkdir()
    set_server_options(config_dir, debug="true", debug_hpack="true", log_to_file="true",
                       log_file=str(log_file))
    app_id = apple_app_id(sim_credentials)
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            answer = await http.post("/push", json=push_body(app_id, "log-call-1"))
            assert answer.status_code == 200, answer.text
            answer = await http.post("/push", json=push_body(app_id, "log-call-fcm", platform="firebase",
                                                             token="fcm-token-" + "x" * 40))
            assert answer.status_code == 200, answer.text
            assert sim.token_fetches >= 1  # the sidecar holds an access token now

            await wait_until(lambda: "event=outcome call_id=log-call-fcm" in log_file.read_text(),
                             "the outcome line in the log file")
            text = log_file.read_text()
            for event in ("received", "attempt", "outcome"):
                assert f"event={event} call_id=log-call-1 " in text, text
            assert re.search(r"DEBUG \S+ ", text), "debug = true: DEBUG lines expected"

            trace = subprocess.run([PUSHSIDECAR, "trace", "log-call-1", "--log", str(log_file)],
                                   capture_output=True, text=True, timeout=60)
            assert trace.returncode == 0, trace.stderr
            story = trace.stdout
            assert story.startswith("call log-call-1\n"), story
            lines = [line.split()[1] for line in story.splitlines()[1:-1]]
            assert lines.index("received") < lines.index("attempt") < lines.index("outcome"), story
            assert "DELIVERED" in story and "summary: 1 push(es) received; delivered 1" in story, story
            assert "log-call-fcm" not in story

            # logrotate: move the file away, SIGHUP, new lines go to a new file.
            rotated = log_file.with_name("pushsidecar.log.1")
            log_file.rename(rotated)
            mark = len(daemon.text())
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_for_output(r"configuration reloaded \(SIGHUP\)", after=mark)
            await wait_until(log_file.exists, "a new log file at the original path")
            answer = await http.post("/push", json=push_body(app_id, "log-call-2"))
            assert answer.status_code == 200, answer.text
            await wait_until(lambda: "event=outcome call_id=log-call-2" in log_file.read_text(),
                             "the new push's lines in the new file")
            assert "log-call-2" not in rotated.read_text()
            assert "log-call-1" not in log_file.read_text()
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0

    # Secrets: nowhere in stderr or either file.
    everything = daemon.text() + rotated.read_text() + log_file.read_text()
    assert "event=received call_id=log-call-2" in daemon.text()  # stderr got the lines too
    tokens = all_access_tokens(sim)
    assert tokens, "the simulator issued an access token"
    for token in tokens:
        assert token not in everything
    # debug_hpack logs every header sent: the secrets went through logging and
    # were masked, so the checks below are not vacuous.
    assert "authorization'=b'bearer [redacted]'" in everything.lower()
    assert "eyJ" not in everything  # no JWT (APNs provider token, OAuth assertion) at all
    assert "ya29" not in everything
    assert "PRIVATE KEY" not in everything
