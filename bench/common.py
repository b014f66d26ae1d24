"""Shared helpers of the benchmarks: statistics, process accounting, servers.

Every benchmark compares the system under test with a baseline IN THE SAME
RUN, because the machines are shared and noisy: absolute figures move from
one run to the next, the ratio much less.  Nothing here asserts on timing.

Each measured side runs in its own child process (``python bench_x.py
--worker ...``) so that its peak RSS (``VmHWM``) and CPU time are its own,
and the simulator runs in yet another process so the server does not share
the client's core.  Everything listens on 127.0.0.1 with kernel-chosen (or
freshly probed) ports and keeps its files in a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


#: the device token of every benchmark push
TOKEN = "0123456789abcdef" * 4
#: pushes sent before timing starts (connections, JIT-free caches, JWT/OAuth)
WARMUP = 500


# -- statistics -----------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of already sorted values (nearest rank)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of a list of latencies in seconds."""
    values = sorted(seconds)
    return {
        "p50_ms": percentile(values, 0.50) * 1000,
        "p99_ms": percentile(values, 0.99) * 1000,
        "max_ms": (values[-1] * 1000) if values else math.nan,
    }


def median(values: Sequence[float]) -> float:
    values = sorted(values)
    if not values:
        return math.nan
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


# -- process accounting (no psutil: /proc and getrusage) -------------------------------


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_status_kb(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of /proc/PID/status (``VmHWM``: peak RSS, ``VmRSS``: current)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size of a process in MB (``VmHWM``)."""
    return proc_status_kb("VmHWM", pid) / 1024


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (utime + stime of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by another process between :meth:`start` and :meth:`stop`."""

    def __init__(self, pid: int):
        self.pid = pid
        self._start = 0.0
        self._wall = 0.0
        self.seconds = 0.0
        self.wall = 0.0

    def start(self) -> None:
        self._start = process_cpu_seconds(self.pid)
        self._wall = time.perf_counter()

    def stop(self) -> float:
        self.seconds = process_cpu_seconds(self.pid) - self._start
        self.wall = time.perf_counter() - self._wall
        return self.seconds

    @property
    def percent(self) -> float:
        return 100 * self.seconds / self.wall if self.wall else math.nan


# -- ports and child processes ---------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def read_json_line(process: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """The first JSON line a child prints on stdout (its port, its results)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffered = b""
    fd = process.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                line = line.strip()
                if line.startswith(b"{"):
                    return json.loads(line)
        elif process.poll() is not None:
            break
    raise RuntimeError(f"{' '.join(map(str, process.args))}: no JSON line within {timeout} s "
                       f"(exit status {process.poll()})")


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only this one process."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_worker(script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python script --worker ...`` and return the JSON line it prints last."""
    command = [PYTHON, str(script), *args]
    completed = subprocess.run(command, capture_output=True, timeout=timeout, env=child_env(), cwd=ROOT)
    lines = [line for line in completed.stdout.decode().splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(args[:3])} failed ({completed.returncode}):\n"
                           + completed.stderr.decode()[-3000:])
    return json.loads(lines[-1])


def worker_report(count: int, elapsed: float, cpu: float, latencies: list[float],
                  errors: int, **extra: Any) -> dict[str, Any]:
    """The JSON a worker prints: throughput, latency, CPU per push, peak RSS."""
    report = {
        "count": count,
        "elapsed_s": elapsed,
        "rate": count / elapsed if elapsed else math.nan,
        "cpu_us_per_push": cpu / count * 1e6 if count else math.nan,
        "peak_rss_mb": peak_rss_mb(),
        "errors": errors,
        **latency_summary(latencies),
    }
    report.update(extra)
    return report


# -- the simulator, in its own process ---------------------------------------------------


class SimProcess:
    """``python -m sidecar.sim`` running in a child process.

    Attributes:
        port: where it listens (TLS, HTTP/2 and HTTP/1.1).
        creds_dir: its credential folder (CA, APNs key, service account...).
        process: the child.
    """

    def __init__(self, process: subprocess.Popen, info: dict[str, Any], creds_dir: Path):
        self.process = process
        self.port: int = info["port"]
        self.ca_file = Path(info["ca_file"])
        self.creds_dir = creds_dir
        self.cpu = CpuMeter(process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def simulator(folder: Path, *extra_args: str, max_records: int = 100) -> Iterator[SimProcess]:
    """Run the simulator (no provider-token update limit, 1000 streams at once)."""
    creds_dir = folder / "sim-creds"
    command = [
        PYTHON, "-m", "sidecar.sim", "--port", "0", "--creds-dir", str(creds_dir),
        "--max-records", str(max_records), "--token-update-interval", "0",
        "--initial-streams", "1000", *extra_args,
    ]
    log = open(folder / "sim.log", "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=child_env(), cwd=ROOT)
    try:
        info = read_json_line(process, timeout=60)
        yield SimProcess(process, info, creds_dir)
    finally:
        stop_process(process)
        log.close()


# -- nginx as a minimal fast HTTP/2 responder ---------------------------------------------

NGINX_PACKAGE = "nginx"  # Debian package (nginx-light also works)

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    http2_max_concurrent_streams 1000;
    client_body_buffer_size 16k;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /3/device/ {{ return 200; }}
        location / {{ return 404; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


class NginxProcess:
    def __init__(self, process: subprocess.Popen, port: int):
        self.process = process
        self.port = port
        self.cpu = CpuMeter(process.pid)  # the master; see worker_pids

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []


@contextlib.contextmanager
def nginx_responder(folder: Path, cert: Path, key: Path) -> Iterator[NginxProcess]:
    """nginx answering 200 to every ``POST /3/device/*`` over TLS + HTTP/2.

    Raises:
        FileNotFoundError: nginx is not installed.
    """
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError(f"nginx is not installed (Debian package: {NGINX_PACKAGE})")
    base = folder / "nginx"
    base.mkdir(parents=True)
    last_error = ""
    for _ in range(5):  # the probed port may be taken by the time nginx binds it
        port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = base / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=base, port=port, cert=cert, key=key, user=user))
        log = open(base / "stderr.log", "wb")
        process = subprocess.Popen([binary, "-p", str(base), "-c", str(conf)],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, 10, process)
        except (RuntimeError, TimeoutError) as exc:
            stop_process(process)
            log.close()
            last_error = f"{exc}: {(base / 'stderr.log').read_text()[-500:]}"
            continue
        try:
            yield NginxProcess(process, port)
        finally:
            stop_process(process)
            log.close()
        return
    raise RuntimeError(f"nginx did not start: {last_error}")


# -- output -----------------------------------------------------------------------------

COLUMNS = [
    ("pushes/s", "rate", "{:,.0f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("cpu us/push", "cpu_us_per_push", "{:.0f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.1f}"),
    ("server cpu %", "server_cpu_pct", "{:.0f}"),
    ("errors", "errors", "{:d}"),
]


def _cell(report: dict[str, Any], key: str, fmt: str) -> str:
    value = report.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]], *,
                ratio: tuple[str, str] | None = None, unit: str = "pushes/s") -> None:
    """Print one comparison table; ``ratio`` = (label of SUT row, label of baseline row)."""
    columns = [(unit if key == "rate" else name, key, fmt) for name, key, fmt in COLUMNS]
    label_width = max(len(label) for label, _ in rows) + 2
    header = "".join(f"{name:>14}" for name, _, _ in columns)
    print(f"\n{title}")
    print(" " * label_width + header)
    for label, report in rows:
        print(f"{label:<{label_width}}" + "".join(f"{_cell(report, key, fmt):>14}" for _, key, fmt in columns))
    if ratio is not None:
        sut = dict(rows)[ratio[0]]
        base = dict(rows)[ratio[1]]
        print(f"ratio {ratio[0]} / {ratio[1]}: throughput x{sut['rate'] / base['rate']:.2f}, "
              f"cpu/push x{sut['cpu_us_per_push'] / base['cpu_us_per_push']:.2f}")
    sys.stdout.flush()


# -- closed-loop load ------------------------------------------------------------------


def push_arguments(doc: str, workers: Sequence[str]) -> Any:
    """The argument parser of a sidecar-vs-httpx sending benchmark (bench_apns, bench_fcm):
    its options, and the hidden ones of its worker processes."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000,
                        help="timed pushes per side (after %d of warm-up)" % WARMUP)
    parser.add_argument("--concurrency", type=int, default=500, help="pushes in flight")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the comparison")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per side")
    parser.add_argument("--worker", choices=sorted(workers), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--creds-dir", type=Path, help=argparse.SUPPRESS)
    return parser



async def closed_loop(operation: Callable[[int], Awaitable[bool]], count: int, concurrency: int,
                      latencies: list[float], max_seconds: float = math.inf) -> int:
    """Call ``operation(0..count-1)`` from ``concurrency`` tasks, each waiting for its
    last call before the next; each call's seconds go to ``latencies``.  Stops
    after ``max_seconds`` (the calls then done are in ``latencies``).

    Returns the number of calls that returned False.
    """
    import trio

    numbers = iter(range(count))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for i in numbers:
            started = time.perf_counter()
            ok = await operation(i)
            latencies.append(time.perf_counter() - started)
            failures += not ok

    with trio.move_on_after(max_seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(min(concurrency, count)):
                nursery.start_soon(worker)
    return failures


async def measure(send: Callable[[int], Awaitable[bool]], count: int, concurrency: int,
                  timeout: float, **extra: Any) -> dict[str, Any]:
    """Warm up, then send ``count`` pushes with ``concurrency`` in flight (closed loop):
    the :func:`worker_report` of the timed part."""
    import trio

    with trio.fail_after(timeout):
        await closed_loop(send, WARMUP, concurrency, [])
        latencies: list[float] = []
        cpu_before, started = cpu_seconds(), time.perf_counter()
        errors = await closed_loop(send, count, concurrency, latencies)
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    return worker_report(count, elapsed, cpu, latencies, errors, **extra)


# -- the sidecar's own sending path ---------------------------------------------------


def bench_push(app_id: str, platform: str, i: int) -> Any:
    """The ``i``-th benchmark push: an incoming audio call to :data:`TOKEN`."""
    import trio

    from sidecar.model import Event, Push

    return Push(app_id=app_id, platform=platform, token=TOKEN, event=Event.INCOMING_SESSION,
                call_id=f"bench-{i}@example.com", from_uri="sip:alice@example.com",
                to_uri="sip:bob@example.com", deadline=trio.current_time() + 60,
                expires_at=time.time() + 45, media_type="audio", from_display_name="Alice")


async def dispatcher_worker(app: Any, count: int, concurrency: int, timeout: float,
                            statistics: dict[str, str]) -> dict[str, Any]:
    """:func:`measure` pushes of the Sylk app type through the real Dispatcher and
    push services for ``app`` (an AppConfig); ``statistics``: report key -> the
    service statistic to add to the report after the run."""
    import trio

    from sidecar.apps.registry import load_app_types
    from sidecar.dispatch import Dispatcher
    from sidecar.observe.metrics import Metrics
    from sidecar.pns.registry import PushServices, builtin_factories

    app_type = load_app_types(None)["sylk"]
    async with trio.open_nursery() as nursery:
        services = PushServices(nursery, builtin_factories())
        services.apply({app.key: app})  # as the daemon puts its applications in force
        dispatcher = Dispatcher(services, metrics=Metrics())

        async def send(i: int) -> bool:
            outcome = await dispatcher.dispatch(bench_push(app.app_id, app.platform, i), app, app_type)
            return bool(outcome.ok)

        report = await measure(send, count, concurrency, timeout)
        stats = services.statistics()[app.key]
        report.update({key: stats.get(name) for key, name in statistics.items()})
        await services.aclose()
        nursery.cancel_scope.cancel()
    return report


# -- the baseline: httpx -------------------------------------------------------------


@contextlib.asynccontextmanager
async def httpx_client(ca_file: Path, concurrency: int) -> Any:
    """An ``httpx.AsyncClient(http2=True)`` trusting the simulator, ``concurrency`` connections at most."""
    import ssl

    import httpx

    context = ssl.create_default_context(cafile=str(ca_file))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(http2=True, verify=context, timeout=60, limits=limits) as client:
        yield client


async def httpx_post(client: Any, url: str, body: bytes, headers: dict[str, str]) -> bool:
    """POST one push with the baseline client: True for a 200 over HTTP/2."""
    import httpx

    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError:
        return False
    return bool(response.status_code == 200 and response.http_version == "HTTP/2")
