"""``POST /push`` on the real sidecar vs a plain Hypercorn app (the server stack's ceiling).

System under test: the sidecar daemon (``python -m sidecar --config-dir
DIR``, its own process, ``return_async = true``, INFO logging to a file as
under journald) sending each push to APNs on the simulator (another
process) before it answers.

Baseline (same run, same load): a minimal ASGI app on Hypercorn's trio
worker, configured like the sidecar's, that reads the body and answers a
fixed Sylk JSON answer of the same size: what the HTTP stack alone costs.

Load: ``wrk`` (Debian package ``wrk``) with keep-alive connections and a
Lua script giving every request its own call-id; without wrk, a trio load
generator with raw HTTP/1.1 keep-alive connections (a separate process).

    .venv/bin/python bench/bench_http_push.py [--connections 64] [--duration 10] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TOKEN = "0123456789abcdef" * 4
WARMUP_SECONDS = 2


def push_body(app_id: str, call_id: str = "bench-call@example.com") -> dict:
    return {
        "app-id": app_id, "platform": "apple", "token": TOKEN, "call-id": call_id,
        "from": "sip:alice@example.com", "to": "sip:bob@example.com", "event": "incoming_session",
        "media-type": "audio", "silent": True, "from-display-name": "Alice",
    }


# -- the baseline server (child process) -------------------------------------------------


def serve_baseline(port: int, answer: bytes) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]  # startup / shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_max_requests = 100000
    trio.run(serve, app, config)


# -- the fallback load generator (child process) --------------------------------------------


async def loadgen(port: int, connections: int, duration: float, app_id: str) -> dict:
    """Raw HTTP/1.1 keep-alive POSTs on ``connections`` sockets for ``duration`` seconds."""
    import trio

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def connection() -> None:
        nonlocal errors
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = b""
        async with stream:
            while time.perf_counter() < deadline:
                body = json.dumps(push_body(app_id, f"bench-{next(counter)}@example.com")).encode()
                request = (b"POST /push HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\n\r\n" % len(body)) + body
                started = time.perf_counter()
                await stream.send_all(request)
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive_some(65536)
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                buffer = buffer[length:]
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(connection)
    elapsed = time.perf_counter() - started
    return {"count": len(latencies), "rate": len(latencies) / elapsed, "errors": errors,
            **common.latency_summary(latencies)}


# -- load with wrk -----------------------------------------------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local head = {head}
local tail = {tail}
request = function()
  counter = counter + 1
  return wrk.format(nil, "/push", nil, head .. counter .. tail)
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk_load(url: str, connections: int, duration: float, script: Path) -> dict:
    wrk = shutil.which("wrk")
    assert wrk is not None
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
               "--timeout", "10s", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60).stdout
    report = {"rate": float(re.search(r"Requests/sec:\s*([\d.]+)", output).group(1)),
              "count": int(re.search(r"(\d+) requests in", output).group(1)), "errors": 0}
    for name, fraction in (("p50_ms", "50"), ("p99_ms", "99")):
        match = re.search(rf"^\s*{fraction}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        report[name] = float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    report["errors"] = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(g) for g in socket_errors.groups()) if socket_errors else 0)
    return report


def run_load(args: argparse.Namespace, port: int, duration: float, app_id: str, script: Path) -> dict:
    if args.loadgen == "wrk":
        return wrk_load(f"http://127.0.0.1:{port}/push", args.connections, duration, script)
    return common.run_worker(Path(__file__), [
        "--worker", "loadgen", "--port", str(port), "--connections", str(args.connections),
        "--duration", str(duration), "--app-id", app_id,
    ], timeout=duration + 60)


def measure_server(args: argparse.Namespace, port: int, process: subprocess.Popen, app_id: str,
                   script: Path, sim: common.SimProcess | None) -> dict:
    common.wait_for_port(port, 30, process)
    run_load(args, port, WARMUP_SECONDS, app_id, script)  # connections, JWT, first success
    server = common.CpuMeter(process.pid)
    server.start()
    if sim is not None:
        sim.cpu.start()
    report = run_load(args, port, args.duration, app_id, script)
    server.stop()
    report["cpu_us_per_push"] = server.seconds / report["count"] * 1e6 if report["count"] else float("nan")
    report["peak_rss_mb"] = common.peak_rss_mb(process.pid)
    if sim is not None:
        sim.cpu.stop()
        report["server_cpu_pct"] = sim.cpu.percent
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds per side")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the comparison")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "trio"), default="auto")
    parser.add_argument("--worker", choices=("loadgen", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--app-id", help=argparse.SUPPRESS)
    parser.add_argument("--answer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "loadgen":
        import trio

        print(json.dumps(trio.run(loadgen, args.port, args.connections, args.duration, args.app_id)), flush=True)
        return
    if args.worker == "baseline":
        serve_baseline(args.port, args.answer.encode())
        return
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "trio"
        if args.loadgen == "trio":
            print("wrk is not installed (Debian package 'wrk'): using the trio load generator")

    from sidecar.sim.cli import write_config
    from sidecar.sim.creds import load_credentials

    print(f"POST /push: {args.connections} keep-alive connections, {args.duration:g} s per side after "
          f"{WARMUP_SECONDS} s of warm-up, load from {args.loadgen} (1 thread); cpu us/push = the "
          f"measured server process; server cpu % = the simulator (upstream)")
    with common.temp_dir("bench-http-") as folder, common.simulator(folder) as sim:
        creds = load_credentials(sim.creds_dir)
        app_id = f"{creds.token_bundle_id}.prod"
        body = json.dumps(push_body(app_id, "CALLID"))
        head, tail = body.split("CALLID")
        script = folder / "post.lua"
        script.write_text(WRK_SCRIPT.format(head=json.dumps(head), tail=json.dumps(tail)))
        # What the sidecar answers a delivered push (the baseline answers the same bytes).
        answer = json.dumps({"code": 200, "description": "push notification response", "data": {
            "code": 200, "description": "OK", "token": TOKEN, "platform": "apple", "app-id": app_id,
            "call-id": "bench-1@example.com", "reason": None, "url": f"https://127.0.0.1:{sim.port}/3/device/{TOKEN}"}})
        ratios = []
        for round_number in range(1, args.rounds + 1):
            rows = []
            # The sidecar, as the daemon runs.
            port = common.free_port()
            config_dir = write_config(folder / "config", creds, sim.port, sidecar_port=port)
            general = config_dir / "general.ini"
            general.write_text(general.read_text().replace("[server]\n", "[server]\nhttp_server = fast\n", 1)
                               + "\n[zmq]\nenabled = false\n")
            log = open(folder / "sidecar.log", "ab")
            sidecar = subprocess.Popen([common.PYTHON, "-m", "sidecar", "--config-dir", str(config_dir)],
                                       stdout=log, stderr=log, env=common.child_env(), cwd=common.ROOT)
            try:
                rows.append(("sidecar", measure_server(args, port, sidecar, app_id, script, sim)))
            finally:
                common.stop_process(sidecar)
                log.close()
            # The bare HTTP stack.
            port = common.free_port()
            baseline = subprocess.Popen(
                [common.PYTHON, __file__, "--worker", "baseline", "--port", str(port), "--answer", answer],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=common.child_env(), cwd=common.ROOT)
            try:
                rows.append(("hypercorn", measure_server(args, port, baseline, app_id, script, None)))
            finally:
                common.stop_process(baseline)
            suffix = f" (round {round_number}/{args.rounds})" if args.rounds > 1 else ""
            common.print_table(f"POST /push{suffix}", rows, ratio=("sidecar", "hypercorn"), unit="requests/s")
            ratios.append(rows[0][1]["rate"] / rows[1][1]["rate"])
        lines = (folder / "sidecar.log").read_text(errors="replace").splitlines()
        problems = [line for line in lines if " ERROR " in line or "Traceback" in line]
        if problems:
            print("sidecar log problems:\n  " + "\n  ".join(problems[:5]))
    if len(ratios) > 1:
        print(f"throughput ratio sidecar/hypercorn per round {', '.join(f'x{v:.2f}' for v in ratios)}; "
              f"median x{common.median(ratios):.2f}")


if __name__ == "__main__":
    main()
