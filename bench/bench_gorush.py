"""Side by side with gorush: the same simulated APNs, the same load, one run.

Baseline: gorush 1.22.0 (Go), built from the vendored release tarball
(``../shared/vendor/gorush-1.22.0.tar.gz``, or ``$GORUSH_TARBALL``) into
``~/.cache/pushsidecar-bench/`` the first time (``go build``; its Go
dependencies come through the Go module proxy; about 3 minutes), in sync
mode so that, like the sidecar with ``return_async = true``, it answers
after APNs has answered.  Its code is never part of this repository.

Both sides send to ONE simulator process (``python -m sidecar.sim``) that
listens on port 443 of a private loopback address (127.x.y.z): gorush dials
Apple's host names on 443, so it runs in its own mount namespace
(``unshare --mount``) where a bind-mounted ``/etc/hosts`` points
``api.push.apple.com`` there, and trusts the simulator's CA through
``SSL_CERT_FILE``.  The machine's own /etc/hosts is never touched.

Shapes, each for ``--duration`` seconds after a warm-up, with wrk (Debian's
``wrk``, 1 thread, ``--connections`` keep-alive connections):

- ``gorush x1``: ``POST /api/push``, one token per request;
- ``gorush x100``: the same with 100 tokens per request;
- ``ours v1``: the sidecar's ``POST /push`` (one token per request);
- ``ours zmq``: the sidecar's ZeroMQ ingress, fed by a load process that
  keeps ``--window`` pushes in flight (counted at the simulator).

Conditions: the simulator answering at once, and after ``--delays`` (0,20
ms).  Each is preceded by the simulator's own ceiling: h2load (Debian's
``nghttp2-client``) sending valid APNs requests straight to it, so every
table says whether a side was held back by the simulator or by itself.
Then the same HTTP shapes against nginx answering 200 on HTTP/2 (Debian's
``nginx-light``, on another loopback address, same certificate): an
upstream that validates nothing and costs almost nothing, so neither side is
held back by it (the ZeroMQ shape is counted by the simulator, so it is not
run there; ``--no-nginx`` skips this condition).

Figures: pushes/s (counted by the simulator, 200 answers), p50/p99 of the
request latency (wrk; for ZeroMQ: send to simulator receipt, from the
simulator's records), CPU per push of the measured server (all its
processes), its peak RSS, the simulator's CPU %, and the ratios to
``gorush x1``.  Nothing asserts: it prints.

    .venv/bin/python bench/bench_gorush.py [--duration 10] [--connections 64] [--workers 1]
        [--delays 0,20] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.bench_http_push import WRK_SCRIPT, push_body, wrk_load  # noqa: E402

GORUSH_VERSION = "1.22.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pushsidecar-bench"
APPLE_HOSTS = ("api.push.apple.com", "api.sandbox.push.apple.com", "api.development.push.apple.com")
TOKEN = "0123456789abcdef" * 4
WARMUP_SECONDS = 2
NGINX = -1.0  # the key of the nginx condition among the delays
DEBIAN_PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx-light", "go": None}


# -- gorush: build once, cache ---------------------------------------------------------


def default_tarball() -> Path:
    env = os.environ.get("GORUSH_TARBALL")
    if env:
        return Path(env)
    here = common.ROOT
    for parent in (here.parent, *here.parents):
        candidate = parent / "shared" / "vendor" / f"gorush-{GORUSH_VERSION}.tar.gz"
        if candidate.exists():
            return candidate
    return here.parent / "shared" / "vendor" / f"gorush-{GORUSH_VERSION}.tar.gz"


def gorush_binary(tarball: Path) -> Path:
    """The cached gorush binary, built from ``tarball`` if missing."""
    binary = CACHE / f"gorush-{GORUSH_VERSION}"
    if binary.exists():
        return binary
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise SystemExit("bench_gorush: Go is not installed (needed once to build gorush)")
    if not tarball.exists():
        raise SystemExit(f"bench_gorush: {tarball} not found (set GORUSH_TARBALL)")
    source = CACHE / f"gorush-{GORUSH_VERSION}-src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(source, filter="data")
    print(f"building gorush {GORUSH_VERSION} in {source} (first run only; a few minutes)", flush=True)
    subprocess.run([go, "build", "-o", "gorush", "."], cwd=source, check=True, timeout=1800)
    shutil.move(str(source / "gorush"), binary)
    return binary


GORUSH_CONFIG = """\
core:
  enabled: true
  address: "127.0.0.1"
  port: "{port}"
  worker_num: {workers}
  queue_num: 8192
  max_notification: 100
  sync: true
  mode: "release"
  ssl: false
  pid:
    enabled: false
grpc:
  enabled: false
api:
  push_uri: "/api/push"
android:
  enabled: false
huawei:
  enabled: false
queue:
  engine: "local"
ios:
  enabled: true
  key_path: "{key}"
  key_type: "p8"
  production: true
  max_concurrent_pushes: 100
  max_retry: 0
  key_id: "{key_id}"
  team_id: "{team_id}"
log:
  format: "string"
  access_log: "{folder}/gorush-access.log"
  access_level: "info"
  error_log: "{folder}/gorush-error.log"
  error_level: "error"
  hide_token: true
stat:
  engine: "memory"
"""


def start_gorush(binary: Path, folder: Path, creds: Any, sim_ip: str, workers: int) -> tuple[subprocess.Popen, int]:
    """gorush in its own mount namespace with Apple's names on ``sim_ip``."""
    port = common.free_port()
    hosts = folder / "gorush-hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{sim_ip} {name}\n" for name in APPLE_HOSTS))
    config = folder / "gorush.yml"
    # worker_num: gorush sends each queued notification from one of these
    # workers and, in sync mode, each waits for APNs; its default (the number
    # of cores) would cap it at 2 pushes in flight here.  One per connection.
    config.write_text(GORUSH_CONFIG.format(port=port, key=creds.apns_key_file, key_id=creds.key_id,
                                           team_id=creds.team_id, folder=folder, workers=workers))
    # unshare without --fork execs in place: the Popen pid is gorush's.
    script = 'mount --bind "$1" /etc/hosts && exec "$2" -c "$3"'
    env = {**os.environ, "SSL_CERT_FILE": str(creds.ca_file), "GOMAXPROCS": str(os.cpu_count() or 1)}
    log = open(folder / "gorush.out", "wb")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(hosts), str(binary), str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return process, port


def gorush_body(topic: str, tokens: int) -> str:
    return json.dumps({"notifications": [{
        "tokens": [TOKEN] * tokens, "platform": 1, "topic": topic, "push_type": "voip",
        "priority": "high", "message": "incoming call", "data": {"event": "incoming_session"},
    }]})


GORUSH_WRK = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""


# -- the simulator on 443 of a private loopback address ----------------------------------


def private_loopback_ip() -> str:
    """A 127.x.y.z address whose port 443 is free (the machine is shared)."""
    for _ in range(50):
        ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as probe:
            try:
                probe.bind((ip, 443))
            except OSError:
                continue
            return ip
    raise SystemExit("bench_gorush: no free 127.x.y.z:443 found")


@contextlib.contextmanager
def simulator(folder: Path, ip: str, *other_ips: str) -> Iterator[common.SimProcess]:
    from sidecar.sim.creds import generate_credentials

    creds_dir = folder / "sim-creds"
    # The same certificate serves nginx on another address (the fast upstream).
    generate_credentials(creds_dir, server_names=(*APPLE_HOSTS, ip, *other_ips))
    command = [common.PYTHON, "-m", "sidecar.sim", "--host", ip, "--port", "443",
               "--creds-dir", str(creds_dir), "--max-records", "20000",
               "--token-update-interval", "0", "--initial-streams", "1000"]
    log = open(folder / "sim.log", "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=common.child_env(),
                               cwd=common.ROOT)
    try:
        info = common.read_json_line(process, timeout=60)
        yield common.SimProcess(process, info, creds_dir)
    finally:
        common.stop_process(process)
        log.close()


class NginxUpstream:
    """nginx answering 200 to every ``POST /3/device/*`` on ``ip:443`` (TLS, HTTP/2):
    an upstream with no validation and almost no cost, to show each side's
    own ceiling."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.pid = process.pid


@contextlib.contextmanager
def nginx_upstream(folder: Path, ip: str, creds: Any) -> Iterator[NginxUpstream | None]:
    binary = common.nginx_binary()
    if binary is None:
        yield None
        return
    base = folder / "nginx"
    base.mkdir(exist_ok=True)
    conf = base / "nginx.conf"
    text = common.NGINX_CONF.replace("listen 127.0.0.1:{port} ssl http2;", "listen {listen} ssl http2;")
    conf.write_text(text.format(dir=base, listen=f"{ip}:443", cert=creds.server_cert, key=creds.server_key,
                                user="user root;" if os.geteuid() == 0 else ""))
    log = open(base / "stderr.log", "wb")
    process = subprocess.Popen([binary, "-p", str(base), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((ip, 443), timeout=0.5):
                break
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(base / 'stderr.log').read_text()[-300:]}")
            time.sleep(0.05)
        yield NginxUpstream(process)
    finally:
        common.stop_process(process)
        log.close()


class SimControl:
    """The simulator's ``/_sim/`` control API (its counters, its delay, its records)."""

    def __init__(self, ip: str, ca_file: Path):
        import httpx

        self.client = httpx.Client(base_url=f"https://{ip}:443", verify=str(ca_file), timeout=30)

    def delivered(self) -> int:
        return int(self.client.get("/_sim/stats").json()["statuses"].get("200", 0))

    def set_delay(self, seconds: float) -> None:
        self.client.post("/_sim/script", json={"delay": seconds}).raise_for_status()

    def records_since(self, seq: int) -> list[dict]:
        return self.client.get("/_sim/requests", params={"since": seq, "kind": "apns"}).json()["requests"]

    def total(self) -> int:
        return int(self.client.get("/_sim/requests", params={"since": 10**12}).json()["total"])


# -- process trees: CPU and RSS of all of a server's processes ---------------------------


def tree_pids(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                queue.extend(int(child) for child in (task / "children").read_text().split())
    return pids


def tree_cpu(pid: int) -> float:
    total = 0.0
    for each in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += common.process_cpu_seconds(each)
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores so far, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Window:
    """CPU of the server (all its processes), of the simulator and of the whole
    machine over one measured window."""

    def __init__(self, server_pid: int, sim_pid: int):
        self.server_pid, self.sim_pid = server_pid, sim_pid
        self.server0 = tree_cpu(server_pid)
        self.sim0 = tree_cpu(sim_pid)
        self.machine0 = machine_busy()
        self.t0 = time.perf_counter()

    def close(self, delivered: int) -> dict:
        elapsed = time.perf_counter() - self.t0
        server = tree_cpu(self.server_pid) - self.server0
        sim = tree_cpu(self.sim_pid) - self.sim0
        busy, total = (now - then for now, then in zip(machine_busy(), self.machine0, strict=True))
        return {
            "elapsed": elapsed, "cpu_us_per_push": server / delivered * 1e6 if delivered else float("nan"),
            "self_cpu_pct": 100 * server / elapsed, "server_cpu_pct": 100 * sim / elapsed,
            "machine_busy_pct": 100 * busy / total if total else float("nan"),
            "peak_rss_mb": tree_rss_mb(self.server_pid),
        }


def tree_rss_mb(pid: int) -> float:
    return sum(common.proc_status_kb("VmHWM", each) for each in tree_pids(pid)) / 1024


# -- load ----------------------------------------------------------------------------------


def connections_for(tokens_per_request: int, args) -> int:
    """wrk connections: ``--connections`` for one token per request; for 100
    tokens, enough for about as many pushes in flight as gorush's 100 per
    notification allow without queueing thousands (at least 2)."""
    return args.connections if tokens_per_request == 1 else max(2, args.connections // 16)


def measure_http(name: str, process: subprocess.Popen, url: str, script: Path, args, sim, control,
                 tokens_per_request: int) -> dict:
    connections = connections_for(tokens_per_request, args)
    wrk_load(url, connections, WARMUP_SECONDS, script)
    delivered0 = control.delivered() if control is not None else 0
    window = Window(process.pid, sim.pid)
    report = wrk_load(url, connections, args.duration, script)
    if control is not None:
        delivered = control.delivered() - delivered0
    else:  # nginx counts nothing: the answered requests (2xx) times their tokens
        delivered = max(0, report["count"] - report["errors"]) * tokens_per_request
    figures = window.close(delivered)
    expected = report["count"] * tokens_per_request
    return {
        **figures, "rate": delivered / figures["elapsed"], "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"], "errors": report["errors"] + max(0, expected - delivered),
        "count": delivered,
    }


def zmq_loadgen(endpoint: str, ip: str, ca_file: str, app_id: str, duration: float, window: int) -> dict:
    """Child process: keep ``window`` pushes in flight for ``duration`` seconds."""
    import zmq

    from sidecar.wire import encode_direct

    control = SimControl(ip, Path(ca_file))
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    base = control.delivered()
    sent = 0
    sent_at: dict[str, float] = {}
    started = time.time()
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        in_flight = sent - (control.delivered() - base)
        for _ in range(max(0, window - in_flight)):
            call_id = f"z{os.getpid()}-{sent}@bench"
            sent_at[call_id] = time.time()
            sock.send(encode_direct("incoming_session", call_id, "sip:alice@example.com",
                                    "sip:bob@example.com", app_id=app_id, platform="apple",
                                    token=TOKEN, display_name="Alice", media_type="audio",
                                    silent=True, sent_at=time.time(), ttl=30))
            sent += 1
        time.sleep(0.005)
    elapsed = time.time() - started
    # Let what was sent arrive, so in-flight pushes are not counted as lost.
    settle = time.perf_counter() + 10
    while control.delivered() - base < sent and time.perf_counter() < settle:
        time.sleep(0.05)
    delivered = control.delivered() - base
    sock.close()
    context.term()
    return {"sent": sent, "delivered": delivered, "elapsed": elapsed,
            "sent_at_sample": dict(list(sent_at.items())[-3000:])}


def measure_zmq(process: subprocess.Popen, endpoint: str, args, sim, control, app_id: str) -> dict:
    def run(duration: float) -> dict:
        return common.run_worker(Path(__file__), [
            "--worker", "zmq", "--endpoint", endpoint, "--sim-ip", args.sim_ip, "--ca-file",
            str(sim.ca_file), "--app-id", app_id, "--duration", str(duration), "--window",
            str(args.window)], timeout=duration + 120)

    run(WARMUP_SECONDS)
    seq0 = control.total()
    window = Window(process.pid, sim.pid)
    result = run(args.duration)
    # CPU over the whole load incl. its settling: per delivered push.
    figures = window.close(result["delivered"])
    latencies = []
    sample = result["sent_at_sample"]
    for record in control.records_since(seq0):
        body = record.get("body") or {}
        call_id = _find_call_id(body)
        if call_id in sample:
            latencies.append(record["time"] - sample[call_id])
    summary = common.latency_summary(latencies)
    return {
        **figures,
        "rate": result["delivered"] / result["elapsed"] if result["elapsed"] else float("nan"),
        "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
        "errors": result["sent"] - result["delivered"], "count": result["delivered"],
    }


def _find_call_id(document: Any) -> str | None:
    """The call-id somewhere in a recorded APNs payload."""
    if isinstance(document, dict):
        for key in ("call-id", "call_id"):
            if isinstance(document.get(key), str):
                return document[key]
        for value in document.values():
            found = _find_call_id(value)
            if found:
                return found
    return None


def h2load_ceiling(sim, creds, ip: str, topic: str, args, folder: Path) -> dict:
    """The simulator's own ceiling: h2load sending valid APNs requests to it."""
    h2load = shutil.which("h2load")
    if h2load is None:
        return {"note": "h2load missing (Debian package nghttp2-client)"}
    import jwt

    token = jwt.encode({"iss": creds.team_id, "iat": int(time.time())},
                       creds.apns_key_file.read_bytes(), algorithm="ES256",
                       headers={"kid": creds.key_id})
    payload = folder / "apns-payload.json"
    payload.write_text(json.dumps({"aps": {}, "event": "incoming_session", "session-id": "h2load"}))
    requests = max(2000, int(args.ceiling_requests))
    command = [h2load, "-n", str(requests), "-c", "1", "-m", "100", "-t", "1",
               "-H", f"authorization: bearer {token}", "-H", f"apns-topic: {topic}",
               "-H", "apns-push-type: voip", "-H", "apns-priority: 10", "-d", str(payload),
               f"https://{ip}:443/3/device/{TOKEN}"]
    cpu0 = common.process_cpu_seconds(sim.pid)
    started = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, timeout=300).stdout
    elapsed = time.perf_counter() - started
    cpu = common.process_cpu_seconds(sim.pid) - cpu0
    ok = re.search(r"status codes: (\d+) 2xx", output)
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    return {"rate": float(rate.group(1)) if rate else float("nan"),
            "count": int(ok.group(1)) if ok else 0, "server_cpu_pct": 100 * cpu / elapsed,
            "errors": requests - (int(ok.group(1)) if ok else 0)}


# -- the sidecar ----------------------------------------------------------------------------


def start_sidecar(folder: Path, creds: Any, sim_ip: str, workers: int) -> tuple[subprocess.Popen, int, str]:
    from sidecar.sim.cli import write_config

    port = common.free_port()
    config_dir = write_config(folder / "sidecar-config", creds, 443, host=sim_ip, sidecar_port=port)
    general = config_dir / "general.ini"
    endpoint = f"ipc://{folder}/push.sock"
    text = general.read_text().replace("[server]\n", f"[server]\nworkers = {workers}\nhttp_server = fast\n", 1)
    general.write_text(text + f"\n[zmq]\nendpoint = {endpoint}\nrun_dir = {folder}\n")
    log = open(folder / "sidecar.log", "ab")
    process = subprocess.Popen([common.PYTHON, "-m", "sidecar", "--config-dir", str(config_dir)],
                               stdout=log, stderr=log, env=common.child_env(), cwd=common.ROOT)
    log.close()
    return process, port, endpoint


# -- output --------------------------------------------------------------------------------


TABLE = [
    ("pushes/s", "rate", "{:,.0f}"), ("p50 ms", "p50_ms", "{:.1f}"), ("p99 ms", "p99_ms", "{:.1f}"),
    ("cpu us/push", "cpu_us_per_push", "{:.0f}"), ("RSS MB", "peak_rss_mb", "{:.0f}"),
    ("own cpu %", "self_cpu_pct", "{:.0f}"), ("sim cpu %", "server_cpu_pct", "{:.0f}"),
    ("machine %", "machine_busy_pct", "{:.0f}"), ("errors", "errors", "{:.0f}"),
]


def print_table(title: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{title}")
    print(f"{'':<14}" + "".join(f"{name:>12}" for name, _, _ in TABLE))
    for label, report in rows:
        cells = []
        for _, key, fmt in TABLE:
            value = report.get(key)
            cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value))
                         else fmt.format(value))
        print(f"{label:<14}" + "".join(f"{cell:>12}" for cell in cells))


def limiter(report: dict, ceiling: dict) -> str:
    """What held a side back, from the figures of its window."""
    if report.get("server_cpu_pct", 0) >= 85 or (
            ceiling.get("rate") and report["rate"] >= 0.85 * ceiling["rate"]):
        return "the simulator (near its ceiling)"
    if report.get("machine_busy_pct", 0) >= 90:
        return "the shared cores (machine busy: server + simulator + wrk + other processes)"
    processes = max(1, round(report.get("self_cpu_pct", 0) / 100 + 0.49))
    if report.get("self_cpu_pct", 0) >= 85 * processes:
        return "its own CPU"
    return "concurrency/latency (cores and simulator had room)"


def print_condition(title: str, ceiling: dict, rows: list[tuple[str, dict]],
                    ratios: dict[str, list[tuple[float, float]]] | None = None) -> None:
    print_table(title, rows)
    base = dict(rows).get("gorush x1")
    if base and base.get("rate"):
        for label, report in rows:
            if label == "gorush x1" or not report.get("rate"):
                continue
            if ratios is not None and ratios.get(label):
                rate = common.median([r for r, _ in ratios[label]])
                cpu = common.median([c for _, c in ratios[label]])
                spread = ", ".join(f"x{r:.2f}" for r, _ in ratios[label])
                print(f"  {label} / gorush x1 (median of the rounds' ratios): pushes/s x{rate:.2f} "
                      f"({spread}), cpu/push x{cpu:.2f}")
            else:
                print(f"  {label} / gorush x1: pushes/s x{report['rate'] / base['rate']:.2f}, "
                      f"cpu/push x{report['cpu_us_per_push'] / base['cpu_us_per_push']:.2f}")
    if "rate" in ceiling:
        print(f"  simulator ceiling (h2load, 1 connection x 100 streams, straight to it): "
              f"{ceiling['rate']:,.0f} pushes/s at {ceiling['server_cpu_pct']:.0f} % of a core")
        for label, report in rows:
            if report.get("rate"):
                print(f"    {label}: {100 * report['rate'] / ceiling['rate']:.0f} % of that; "
                      f"limited by {limiter(report, ceiling)}")
    elif ceiling:
        print(f"  simulator ceiling: {ceiling.get('note')}")
    sys.stdout.flush()


def median_report(reports: list[dict]) -> dict:
    keys = {key for report in reports for key, value in report.items() if isinstance(value, (int, float))}
    return {key: common.median([r[key] for r in reports if isinstance(r.get(key), (int, float))])
            for key in keys}


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in DEBIAN_PACKAGES.items() if pkg and not shutil.which(tool)]
    if missing and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=subprocess.DEVNULL, check=False)
    if not shutil.which("wrk"):
        raise SystemExit("bench_gorush: wrk is missing (Debian package wrk)")
    if not shutil.which("unshare"):
        raise SystemExit("bench_gorush: unshare is missing (util-linux)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds per shape")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    parser.add_argument("--window", type=int, default=0,
                        help="ZeroMQ pushes kept in flight (default: --connections)")
    parser.add_argument("--workers", default="1", help="sidecar workers; a list runs each (1,2)")
    parser.add_argument("--delays", default="0,20", help="simulator answer delays in ms")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; medians at the end")
    parser.add_argument("--no-nginx", dest="nginx", action="store_false",
                        help="skip the condition with nginx as the upstream")
    parser.add_argument("--shapes", default="gorush1,gorush100,v1,zmq")
    parser.add_argument("--ceiling-requests", type=int, default=30000)
    parser.add_argument("--tarball", type=Path, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--worker", choices=("zmq",), help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--sim-ip", help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)
    parser.add_argument("--app-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "zmq":
        print(json.dumps(zmq_loadgen(args.endpoint, args.sim_ip, args.ca_file, args.app_id,
                                     args.duration, args.window)), flush=True)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench_gorush: needs root (port 443 on loopback, a private mount namespace)")
    ensure_tools()
    binary = gorush_binary(args.tarball or default_tarball())
    shapes = args.shapes.split(",")
    delays = [float(d) for d in args.delays.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    args.sim_ip = private_loopback_ip()
    nginx_ip = private_loopback_ip() if args.nginx else None
    args.window = args.window or args.connections
    print(f"side by side: gorush {GORUSH_VERSION} vs pushsidecar; {args.duration:g} s per shape after "
          f"{WARMUP_SECONDS} s of warm-up; wrk 1 thread, {args.connections} connections "
          f"({connections_for(100, args)} for 100 tokens per request); ZeroMQ window "
          f"{args.window} pushes; gorush worker_num {args.connections}; one simulator on {args.sim_ip}:443; "
          f"{os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.1f} before the run)")
    print("pushes/s = 200 answers counted by the simulator; cpu us/push = the measured server "
          "(all its processes); server cpu % = the simulator")
    results: dict[str, Any] = {"conditions": []}
    folder_context = (contextlib.nullcontext(Path(tempfile.mkdtemp(prefix="bench-gorush-")))
                      if args.keep else common.temp_dir("bench-gorush-"))
    with folder_context as folder, simulator(folder, args.sim_ip, *filter(None, [nginx_ip])) as sim:
        if args.keep:
            print(f"files kept in {folder}")
        from sidecar.sim.creds import load_credentials

        creds = load_credentials(sim.creds_dir)
        control = SimControl(args.sim_ip, sim.ca_file)
        app_id = f"{creds.token_bundle_id}.prod"
        topic = f"{app_id}.voip"
        body = json.dumps(push_body(app_id, "CALLID"))
        head, tail = body.split("CALLID")
        v1_script = folder / "v1.lua"
        v1_script.write_text(WRK_SCRIPT.format(head=json.dumps(head), tail=json.dumps(tail)))
        gorush_scripts = {}
        for tokens in (1, 100):
            gorush_scripts[tokens] = folder / f"gorush{tokens}.lua"
            gorush_scripts[tokens].write_text(GORUSH_WRK.format(body=json.dumps(gorush_body(topic, tokens))))
        collected: dict[float, dict[str, list[dict]]] = {d: {} for d in delays}
        ceilings: dict[float, list[dict]] = {d: [] for d in delays}
        for round_number in range(1, args.rounds + 1):
            for delay in delays:
                control.set_delay(delay / 1000)
                ceiling = h2load_ceiling(sim, creds, args.sim_ip, topic, args, folder)
                rows = run_shapes(args, shapes, worker_counts, binary, folder, creds, sim, control,
                                  app_id, v1_script, gorush_scripts)
                suffix = f", round {round_number}/{args.rounds}" if args.rounds > 1 else ""
                print_condition(f"APNs delay {delay:g} ms{suffix}", ceiling, rows)
                ceilings[delay].append(ceiling)
                for label, report in rows:
                    collected[delay].setdefault(label, []).append(report)
            if nginx_ip is not None:
                with nginx_upstream(folder, nginx_ip, creds) as nginx:
                    if nginx is not None:
                        rows = run_shapes(args, shapes, worker_counts, binary, folder, creds, nginx, None,
                                          app_id, v1_script, gorush_scripts, upstream_ip=nginx_ip)
                        suffix = f", round {round_number}/{args.rounds}" if args.rounds > 1 else ""
                        print_condition(f"upstream nginx 'return 200' (no validation, 0 ms){suffix}; "
                                        f"'sim cpu %' = nginx", {}, rows)
                        for label, report in rows:
                            collected.setdefault(NGINX, {}).setdefault(label, []).append(report)
        results["rounds"] = {str(d): {label: reports for label, reports in by_label.items()}
                             for d, by_label in collected.items()}
        if args.rounds > 1:
            print(f"\n=== medians of {args.rounds} rounds ===")
            for delay in delays + ([NGINX] if NGINX in collected else []):
                rows = [(label, median_report(reports)) for label, reports in collected[delay].items()]
                ratios = {}
                base_reports = collected[delay].get("gorush x1", [])
                for label, reports in collected[delay].items():
                    ratios[label] = [(r["rate"] / b["rate"], r["cpu_us_per_push"] / b["cpu_us_per_push"])
                                     for r, b in zip(reports, base_reports, strict=False) if b.get("rate")]
                found = [c for c in ceilings.get(delay, []) if "rate" in c]
                ceiling = median_report(found) if found else {}
                title = (f"APNs delay {delay:g} ms" if delay != NGINX
                         else "upstream nginx 'return 200' (0 ms; 'sim cpu %' = nginx)")
                print_condition(f"{title} (median of {args.rounds} rounds)", ceiling, rows, ratios)
        problems = [line for line in (folder / "sidecar.log").read_text(errors="replace").splitlines()
                    if " ERROR " in line or "Traceback" in line]
        if problems:
            print("sidecar log problems:\n  " + "\n  ".join(problems[:5]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def run_shapes(args, shapes, worker_counts, binary, folder, creds, sim, control, app_id, v1_script,
               gorush_scripts, upstream_ip: str | None = None) -> list[tuple[str, dict]]:
    """Every shape once against the upstream (the simulator with its current
    delay, or nginx when ``control`` is None): gorush, then ours."""
    rows: list[tuple[str, dict]] = []
    upstream_ip = upstream_ip or args.sim_ip
    if "gorush1" in shapes or "gorush100" in shapes:
        gorush, port = start_gorush(binary, folder, creds, upstream_ip, args.connections)
        try:
            common.wait_for_port(port, 30, gorush)
            for tokens in (1, 100):
                if f"gorush{tokens}" in shapes:
                    rows.append((f"gorush x{tokens}", measure_http(
                        "gorush", gorush, f"http://127.0.0.1:{port}/api/push", gorush_scripts[tokens],
                        args, sim, control, tokens)))
        finally:
            common.stop_process(gorush)
    for workers in worker_counts:
        suffix = f" w{workers}" if len(worker_counts) > 1 or workers != 1 else ""
        sidecar, port, endpoint = start_sidecar(folder, creds, upstream_ip, workers)
        try:
            common.wait_for_port(port, 60, sidecar)
            if workers > 1:
                time.sleep(2)  # every worker listening, not just the first
            if "v1" in shapes:
                rows.append((f"ours v1{suffix}", measure_http(
                    "sidecar", sidecar, f"http://127.0.0.1:{port}/push", v1_script, args, sim, control, 1)))
            if "zmq" in shapes and control is not None:  # its count comes from the simulator
                rows.append((f"ours zmq{suffix}", measure_zmq(sidecar, endpoint, args, sim, control, app_id)))
        finally:
            common.stop_process(sidecar, timeout=15)
    return rows


if __name__ == "__main__":
    main()
