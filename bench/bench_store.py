"""Benchmark of the token store: lookups, and v2 account pushes through the sidecar.

Two measurements, each on SQLite and on Cassandra:

* **lookups**: ``store.devices(account)`` straight on the store (1,000
  accounts of 5 devices), from several concurrent tasks;
* **v2 fan-out**: ``POST /v2/tokens/{account}/push`` to the real sidecar
  (a ``pushsidecar`` subprocess), for an account of 5 devices (3 on APNs,
  2 on FCM), answered by the simulator (a ``pushsidecar simulate``
  subprocess) over HTTP/2 + TLS.  Each request is one lookup and 5 pushes.

Everything listens on 127.0.0.1 on free ports and lives in a temporary
folder; every phase stops after its count or its time limit, whichever comes
first, and every process started here is stopped here.

Cassandra: PUSHSIDECAR_CASSANDRA_HOST (+ PUSHSIDECAR_CASSANDRA_PORT, default
9042) names a running node; otherwise one is started with
``.ci/cassandra.sh`` in the temporary folder (needs Java 17 and Maven, or the
cached jars), and Cassandra is skipped, with the reason printed, when that is
not possible.  A keyspace of its own is created and dropped.

    .venv/bin/python bench/bench_store.py [--lookups N] [--pushes N] [--backends sqlite,cassandra]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Awaitable, Callable

import httpx
import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402

PUSHSIDECAR = Path(sys.executable).with_name("pushsidecar")
CASSANDRA_SCRIPT = REPO / ".ci" / "cassandra.sh"
ACCOUNTS = 1_000
DEVICES_PER_ACCOUNT = 5
START_TIMEOUT = 60.0


@dataclass
class Result:
    backend: str
    measure: str
    operations: int
    seconds: float
    latencies: list[float]  # seconds, one per operation
    failures: int = 0
    per_operation: int = 1  # pushes per request for the fan-out

    def row(self) -> list[str]:
        lat = sorted(self.latencies) or [float("nan")]
        p50 = lat[len(lat) // 2]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        rate = self.operations / self.seconds if self.seconds else 0.0
        return [
            self.backend, self.measure, f"{self.operations}", f"{self.seconds:.2f}",
            f"{rate:,.0f}", f"{rate * self.per_operation:,.0f}",
            f"{p50 * 1000:.2f}", f"{p99 * 1000:.2f}", f"{self.failures}",
        ]


HEADER = ["backend", "measure", "requests", "seconds", "requests/s", "pushes or lookups/s",
          "p50 ms", "p99 ms", "failed"]


def print_table(results: list[Result], skipped: list[str]) -> None:
    rows = [HEADER] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    for n, row in enumerate(rows):
        print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for reason in skipped:
        print(f"skipped: {reason}")


# -- a bounded concurrent loop ---------------------------------------------------------


async def run_bounded(
    count: int, concurrency: int, max_seconds: float, operation: Callable[[int], Awaitable[bool]]
) -> tuple[int, float, list[float], int]:
    """Call ``operation(i)`` ``count`` times from ``concurrency`` tasks, for at most max_seconds.

    Returns (done, elapsed seconds, latencies, failures); ``operation``
    returns False for a failed call.
    """
    latencies: list[float] = []
    started = time.perf_counter()
    failures = await common.closed_loop(operation, count, concurrency, latencies, max_seconds)
    return len(latencies), time.perf_counter() - started, latencies, failures


# -- stores ----------------------------------------------------------------------------


def account(i: int) -> str:
    return f"bench{i}@bench.example"


async def fill_store(store, app_id: str) -> None:
    from sidecar.store.base import DeviceRecord

    async def add(i: int) -> bool:
        a, d = divmod(i, DEVICES_PER_ACCOUNT)
        await store.add(DeviceRecord(
            account=account(a), app_id=app_id, device_id=f"dev-{d}", platform="firebase",
            device_token=f"token-{a}-{d}-" + "x" * 100, silent=True))
        return True

    await run_bounded(ACCOUNTS * DEVICES_PER_ACCOUNT, 16, 600, add)


async def bench_lookups(backend: str, store, args: argparse.Namespace) -> Result:
    await fill_store(store, "com.example.bench")
    rng = random.Random(7)

    async def lookup(i: int) -> bool:
        found = await store.devices(account(rng.randrange(ACCOUNTS)))
        return len(found) == DEVICES_PER_ACCOUNT

    done, seconds, latencies, failures = await run_bounded(
        args.lookups, args.concurrency, args.max_seconds, lookup)
    return Result(backend, f"store.devices() x{args.concurrency}", done, seconds, latencies, failures)


# -- processes -------------------------------------------------------------------------


async def stop_process(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def start_simulator(folder: Path) -> tuple[trio.Process, Path]:
    """``pushsidecar simulate --write-config``; returns the process and the config dir."""
    config_dir = folder / "config"
    process = await trio.lowlevel.open_process(
        [str(PUSHSIDECAR), "simulate", "--write-config", str(config_dir),
         "--token-update-interval", "0", "--max-records", "1000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=(folder / "simulator.log").open("ab"), cwd=folder,
    )
    line = b""
    with trio.fail_after(START_TIMEOUT):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError("the simulator exited during start-up; see simulator.log")
            line += chunk
    json.loads(line)  # {"port": ..., "config_dir": ...}: it is up
    return process, config_dir


async def start_sidecar(config_dir: Path, log: Path) -> tuple[trio.Process, str]:
    """The daemon on a free port (retried if the port was taken meanwhile)."""
    for _ in range(5):
        port = common.free_port()
        with log.open("ab") as out:
            process = await trio.lowlevel.open_process(
                [str(PUSHSIDECAR), "--config-dir", str(config_dir), "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO,
            )
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:
            with trio.move_on_after(START_TIMEOUT):
                while process.poll() is None:
                    try:
                        if (await http.get("/health")).status_code == 200:
                            return process, url
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
        await stop_process(process)
    raise RuntimeError(f"pushsidecar did not start; see {log}")


def sidecar_config(sim_config: Path, folder: Path, extra: str) -> Path:
    """A copy of the simulator's config with ZeroMQ off and the store section."""
    config_dir = folder / "sidecar-config"
    shutil.copytree(sim_config, config_dir)
    general = config_dir / "general.ini"
    text = general.read_text().replace(str(sim_config / "spool"), str(config_dir / "spool"))
    general.write_text(text + "\n[zmq]\nenabled = false\n" + extra)
    return config_dir


async def bench_fanout(backend: str, sim_config: Path, folder: Path, extra: str,
                       args: argparse.Namespace) -> Result:
    from sidecar.sim.creds import ensure_credentials

    creds = ensure_credentials(sim_config / "credentials")
    config_dir = sidecar_config(sim_config, folder / backend, extra)
    process, url = await start_sidecar(config_dir, folder / backend / "sidecar.log")
    target = f"fanout-{uuid.uuid4().hex[:8]}@bench.example"
    try:
        limits = httpx.Limits(max_connections=args.push_concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            devices = [
                (f"{creds.token_bundle_id}.prod", "apple", "a1" * 32 + "-" + "b1" * 32),
                (f"{creds.token_bundle_id}.prod", "apple", "a2" * 32),
                (f"{creds.cert_bundle_id}.prod", "apple", "a3" * 32),
                (f"{creds.token_bundle_id}.prod", "firebase", "fcm-bench-token-1"),
                (f"{creds.token_bundle_id}.prod", "firebase", "fcm-bench-token-2"),
            ]
            for n, (app_id, platform, token) in enumerate(devices):
                answer = await http.post(f"/v2/tokens/{target}", json={
                    "app-id": app_id, "platform": platform, "token": token, "device-id": f"d{n}"})
                answer.raise_for_status()

            async def push(i: int) -> bool:
                answer = await http.post(f"/v2/tokens/{target}/push", json={
                    "call-id": f"bench-{i}", "from": "sip:alice@bench.example",
                    "to": f"sip:{target}", "event": "incoming_session", "media-type": "audio"})
                if answer.status_code != 200:
                    return False
                data = answer.json()["data"]
                return len(data) == len(devices) and all(e["code"] == 200 for e in data)

            await push(-1)  # warm up: TLS, HTTP/2, the OAuth token
            done, seconds, latencies, failures = await run_bounded(
                args.pushes, args.push_concurrency, args.max_seconds, push)
    finally:
        await stop_process(process)
    return Result(backend, f"v2 push, 5 devices x{args.push_concurrency}", done, seconds,
                  latencies, failures, per_operation=len(devices))


# -- Cassandra -------------------------------------------------------------------------


class CassandraNode:
    """A node to benchmark against: given, or started with .ci/cassandra.sh."""

    def __init__(self, folder: Path):
        self.folder = folder / "cassandra"
        self.started_here = False
        self.host = ""
        self.port = 0

    def start(self) -> str | None:
        """Find or start a node; return why not, or None when it is there."""
        host = os.environ.get("PUSHSIDECAR_CASSANDRA_HOST")
        if host:
            self.host, self.port = host, int(os.environ.get("PUSHSIDECAR_CASSANDRA_PORT", "9042"))
            return None
        cache = Path(os.environ.get("PUSHSIDECAR_CASSANDRA_CACHE",
                                    Path.home() / ".cache" / "pushsidecar-cassandra"))
        jars_ready = any(cache.glob("lib-*/.complete"))
        if shutil.which("java") is None and not Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java").exists():
            return "Cassandra: no Java found (install openjdk-17, or set PUSHSIDECAR_CASSANDRA_HOST)"
        if not jars_ready and shutil.which("mvn") is None:
            return "Cassandra: no Maven and no cached jars (install maven, or set PUSHSIDECAR_CASSANDRA_HOST)"
        print("starting Cassandra with .ci/cassandra.sh ...", file=sys.stderr, flush=True)
        started = subprocess.run(["bash", str(CASSANDRA_SCRIPT), "start", str(self.folder)],
                                 capture_output=True, text=True, timeout=600)
        if started.returncode != 0:
            return f"Cassandra: .ci/cassandra.sh start failed: {started.stderr.strip()[-500:]}"
        self.started_here = True
        self.host, self.port = "127.0.0.1", int((self.folder / "native_port").read_text())
        return None

    def stop(self) -> None:
        if self.started_here:
            subprocess.run(["bash", str(CASSANDRA_SCRIPT), "stop", str(self.folder)],
                           capture_output=True, timeout=120)


def drop_keyspace(host: str, port: int, keyspace: str) -> None:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    cluster = Cluster(contact_points=[(host, port)], protocol_version=4, execution_profiles={
        EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(),
                                               request_timeout=60)})
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
    finally:
        cluster.shutdown()


# -- main ------------------------------------------------------------------------------


async def run_benchmarks(args: argparse.Namespace, folder: Path) -> tuple[list[Result], list[str]]:
    from sidecar.config import CassandraSettings
    from sidecar.store.cassandra import CassandraTokenStore, init_schema
    from sidecar.store.sqlite import SqliteTokenStore

    results: list[Result] = []
    skipped: list[str] = []
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    node = CassandraNode(folder)
    keyspace = f"pushsidecar_bench_{uuid.uuid4().hex[:8]}"
    cassandra_ready = False
    sim_process = None
    try:
        if "cassandra" in backends:
            reason = await trio.to_thread.run_sync(node.start)
            if reason:
                skipped.append(reason)
            else:
                settings = CassandraSettings(contact_points=((node.host, node.port),),
                                             keyspace=keyspace, consistency="ONE")
                await init_schema(settings, {"class": "SimpleStrategy", "replication_factor": 1})
                cassandra_ready = True

        if "sqlite" in backends:
            store = await SqliteTokenStore.open(folder / "lookups" / "push_tokens.sqlite")
            try:
                results.append(await bench_lookups("sqlite", store, args))
            finally:
                await store.aclose()
        if cassandra_ready:
            store = CassandraTokenStore(settings)
            try:
                results.append(await bench_lookups("cassandra", store, args))
            finally:
                await store.aclose()

        if args.pushes > 0:
            sim_process, sim_config = await start_simulator(folder)
            if "sqlite" in backends:
                results.append(await bench_fanout("sqlite", sim_config, folder, "", args))
            if cassandra_ready:
                extra = (f"[Cassandra]\ncluster_contact_points = {node.host}:{node.port}\n"
                         f"keyspace = {keyspace}\nconsistency = ONE\n")
                results.append(await bench_fanout("cassandra", sim_config, folder, extra, args))
    finally:
        with trio.CancelScope(shield=True):
            if sim_process is not None:
                await stop_process(sim_process)
            if cassandra_ready and not node.started_here:
                await trio.to_thread.run_sync(drop_keyspace, node.host, node.port, keyspace)
            await trio.to_thread.run_sync(node.stop)
    return results, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=20_000, help="store.devices() calls per backend")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent lookup tasks")
    parser.add_argument("--pushes", type=int, default=2_000,
                        help="v2 push requests per backend (5 pushes each; 0: skip)")
    parser.add_argument("--push-concurrency", type=int, default=32, help="concurrent HTTP requests")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="time limit of each measurement")
    parser.add_argument("--backends", default="sqlite,cassandra")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        results, skipped = trio.run(run_benchmarks, args, folder)
    finally:
        if args.keep:
            print(f"files kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"# pushsidecar token store benchmark, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print_table(results, skipped)
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
