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
import json
import sys
import time
from pathlib import Path
from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TOKEN, WARMUP, measure = common.TOKEN, common.WARMUP, common.measure


# -- workers (child processes) -------------------------------------------------------


def sylk_push(app_id: str, i: int):
    return common.bench_push(app_id, "apple", i)


async def sidecar_worker(args: argparse.Namespace) -> dict:
    from sidecar.config import AppConfig
    from sidecar.sim.creds import load_credentials

    creds = load_credentials(args.creds_dir)
    app = AppConfig(section="bench-apple", app_id=f"{creds.token_bundle_id}.prod", app_type="sylk",
                    platform="apple", apple_host="127.0.0.1", apple_port=args.port,
                    apple_key=creds.apns_key_file, key_id=creds.key_id, team_id=creds.team_id,
                    tls_ca_file=creds.ca_file)
    return await common.dispatcher_worker(app, args.count, args.concurrency, args.timeout,
                                          {"connections": "connects"})


async def httpx_worker(args: argparse.Namespace) -> dict:

    from sidecar.apps.registry import load_app_types
    from sidecar.sim.creds import load_credentials
    from sidecar.sim.testing import apns_provider_token

    creds = load_credentials(args.creds_dir)
    app_id = f"{creds.token_bundle_id}.prod"
    app_type = load_app_types(None)["sylk"]
    authorization = "bearer " + apns_provider_token(creds)
    url = f"https://127.0.0.1:{args.port}/3/device/{TOKEN}"
    async with common.httpx_client(creds.ca_file, args.concurrency) as client:

        async def send(i: int) -> bool:
            notification = app_type.build(sylk_push(app_id, i), "apple", time.time())
            headers = dict(notification.headers)
            headers["authorization"] = authorization
            body = json.dumps(notification.payload, separators=(",", ":"), ensure_ascii=False).encode()
            return await common.httpx_post(client, url, body, headers)

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
    parser = common.push_arguments(__doc__, WORKERS)
    parser.add_argument("--servers", default="sim,nginx", help="comma-separated: sim, nginx")
    parser.add_argument("--sides", default="sidecar,httpx", help=argparse.SUPPRESS)
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
