"""APNs sending: the dispatcher + ApnsService + our HTTP/2 client vs httpx[http2].

System under test: N pushes through :class:`sidecar.dispatch.Dispatcher` ->
:class:`sidecar.pns.apns.ApnsService` -> our HTTP/2 connection (one
connection, JWT auth, real metrics, logging off), C pushes in flight.

Baseline (same run, same server, same concurrency): the same requests
(the Sylk app type's headers and JSON body, a provider token JWT) sent with
``httpx.AsyncClient(http2=True)`` under trio.  Note that httpx (httpcore)
caps one HTTP/2 connection at 100 concurrent streams, whatever the server
allows; that is part of what is being compared.

Servers: the simulator (``python -m sidecar.sim``, a separate process; it is
Python too and often the ceiling) and, when installed, nginx answering 200
to ``POST /3/device/*`` (a fast HTTP/2 responder that shows the client's own
ceiling).  Each side runs in its own process, so CPU and peak RSS are its own.

    .venv/bin/python bench/bench_apns.py [--count 20000] [--concurrency 500] [--rounds 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TOKEN = "0123456789abcdef" * 4
WARMUP = 500


# -- workers (child processes) -------------------------------------------------------


async def measure(send: Callable[[int], Awaitable[bool]], count: int, concurrency: int,
                  timeout: float, **extra) -> dict:
    """Warm up, then send ``count`` pushes with ``concurrency`` in flight (closed loop)."""
    import trio

    async def run(total: int, latencies: list[float]) -> int:
        numbers = iter(range(total))
        errors = 0

        async def worker() -> None:
            nonlocal errors
            for i in numbers:
                started = time.perf_counter()
                ok = await send(i)
                latencies.append(time.perf_counter() - started)
                errors += not ok

        async with trio.open_nursery() as nursery:
            for _ in range(min(concurrency, total)):
                nursery.start_soon(worker)
        return errors

    with trio.fail_after(timeout):
        await run(WARMUP, [])
        latencies: list[float] = []
        cpu_before, started = common.cpu_seconds(), time.perf_counter()
        errors = await run(count, latencies)
        elapsed, cpu = time.perf_counter() - started, common.cpu_seconds() - cpu_before
    return common.worker_report(count, elapsed, cpu, latencies, errors, **extra)


def sylk_push(app_id: str, i: int):
    import trio

    from sidecar.model import Event, Push

    return Push(app_id=app_id, platform="apple", token=TOKEN, event=Event.INCOMING_SESSION,
                call_id=f"bench-{i}@example.com", from_uri="sip:alice@example.com",
                to_uri="sip:bob@example.com", deadline=trio.current_time() + 60,
                expires_at=time.time() + 45, media_type="audio", from_display_name="Alice")


async def sidecar_worker(args: argparse.Namespace) -> dict:
    import trio

    from sidecar.apps.registry import load_app_types
    from sidecar.config import AppConfig
    from sidecar.dispatch import Dispatcher
    from sidecar.observe.metrics import Metrics
    from sidecar.pns.registry import PushServices, builtin_factories
    from sidecar.sim.creds import load_credentials

    creds = load_credentials(args.creds_dir)
    app = AppConfig(section="bench-apple", app_id=f"{creds.token_bundle_id}.prod", app_type="sylk",
                    platform="apple", apple_host="127.0.0.1", apple_port=args.port,
                    apple_key=creds.apns_key_file, key_id=creds.key_id, team_id=creds.team_id,
                    tls_ca_file=creds.ca_file)
    app_type = load_app_types(None)["sylk"]
    async with trio.open_nursery() as nursery:
        services = PushServices(nursery, builtin_factories())
        services.apply({app.key: app})
        dispatcher = Dispatcher(services, metrics=Metrics())

        async def send(i: int) -> bool:
            outcome = await dispatcher.dispatch(sylk_push(app.app_id, i), app, app_type)
            return outcome.ok

        report = await measure(send, args.count, args.concurrency, args.timeout)
        report["connections"] = services.statistics()[app.key].get("connects")
        await services.aclose()
        nursery.cancel_scope.cancel()
    return report


async def httpx_worker(args: argparse.Namespace) -> dict:
    import httpx

    from sidecar.apps.registry import load_app_types
    from sidecar.sim.creds import load_credentials
    from sidecar.sim.testing import apns_provider_token

    creds = load_credentials(args.creds_dir)
    app_id = f"{creds.token_bundle_id}.prod"
    app_type = load_app_types(None)["sylk"]
    authorization = "bearer " + apns_provider_token(creds)
    url = f"https://127.0.0.1:{args.port}/3/device/{TOKEN}"
    context = ssl.create_default_context(cafile=str(creds.ca_file))
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(http2=True, verify=context, timeout=60, limits=limits) as client:

        async def send(i: int) -> bool:
            notification = app_type.build(sylk_push(app_id, i), "apple", time.time())
            headers = dict(notification.headers)
            headers["authorization"] = authorization
            body = json.dumps(notification.payload, separators=(",", ":"), ensure_ascii=False).encode()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.http_version == "HTTP/2"

        return await measure(send, args.count, args.concurrency, args.timeout)


WORKERS = {"sidecar": sidecar_worker, "httpx": httpx_worker}


def worker_main(args: argparse.Namespace) -> None:
    import trio

    report = trio.run(WORKERS[args.worker], args)
    print(json.dumps(report), flush=True)


# -- the driver ------------------------------------------------------------------------


def run_side(args: argparse.Namespace, side: str, port: int, creds_dir: Path,
             server_pids: Callable[[], list[int]]) -> dict:
    meters = [common.CpuMeter(pid) for pid in server_pids()]
    for meter in meters:
        meter.start()
    report = common.run_worker(Path(__file__), [
        "--worker", side, "--port", str(port), "--creds-dir", str(creds_dir),
        "--count", str(args.count), "--concurrency", str(args.concurrency),
        "--timeout", str(args.timeout),
    ], timeout=args.timeout + 60)
    for meter in meters:
        meter.stop()
    if meters:
        # The whole worker lifetime (start-up included), so a lower bound of the busy share.
        report["server_cpu_pct"] = sum(m.percent for m in meters)
    return report


def compare(args: argparse.Namespace, title: str, port: int, creds_dir: Path,
            server_pids: Callable[[], list[int]]) -> float:
    rows = []
    for side in args.sides:
        rows.append((f"{side}", run_side(args, side, port, creds_dir, server_pids)))
    common.print_table(title, rows, ratio=("sidecar", "httpx") if len(rows) == 2 else None)
    reports = dict(rows)
    if len(rows) == 2:
        return reports["sidecar"]["rate"] / reports["httpx"]["rate"]
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="timed pushes per side (after %d of warm-up)" % WARMUP)
    parser.add_argument("--concurrency", type=int, default=500, help="pushes in flight")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the comparison")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per side")
    parser.add_argument("--servers", default="sim,nginx", help="comma-separated: sim, nginx")
    parser.add_argument("--sides", default="sidecar,httpx", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--creds-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    args.sides = args.sides.split(",")
    servers = args.servers.split(",")
    print(f"APNs: {args.count:,} pushes per side, {args.concurrency} in flight, one connection; "
          f"sidecar = Dispatcher -> ApnsService -> our HTTP/2; httpx = httpx.AsyncClient(http2=True); "
          f"cpu = client process; server cpu % = the server process over the side's whole run")
    ratios: dict[str, list[float]] = {server: [] for server in servers}
    with common.temp_dir("bench-apns-") as folder, common.simulator(folder) as sim:
        for round_number in range(1, args.rounds + 1):
            suffix = f" (round {round_number}/{args.rounds})" if args.rounds > 1 else ""
            if "sim" in servers:
                ratios["sim"].append(compare(args, f"server: simulator (Python, separate process){suffix}",
                                             sim.port, sim.creds_dir, lambda: [sim.pid]))
            if "nginx" in servers:
                if common.nginx_binary() is None:
                    if round_number == 1:
                        print(f"\nserver: nginx -- SKIPPED: nginx is not installed "
                              f"(Debian package '{common.NGINX_PACKAGE}')")
                    continue
                from sidecar.sim.creds import load_credentials

                creds = load_credentials(sim.creds_dir)
                with common.nginx_responder(folder / f"round{round_number}", creds.server_cert,
                                            creds.server_key) as nginx:
                    ratios["nginx"].append(compare(
                        args, f"server: nginx 'return 200' (HTTP/2 + TLS, 1 worker){suffix}",
                        nginx.port, sim.creds_dir, nginx.worker_pids))
    for server, values in ratios.items():
        if len(values) > 1:
            print(f"{server}: throughput ratio sidecar/httpx per round "
                  f"{', '.join(f'x{v:.2f}' for v in values)}; median x{common.median(values):.2f}")


if __name__ == "__main__":
    main()
