"""Fault suite: pushes through the real sidecar while the simulator misbehaves.

For each fault, a fresh sidecar daemon (its own process, ``return_async =
true``) gets the same pushes over HTTP (``POST /push``, one call-id each,
fixed concurrency) while the simulator (another process) injects that fault.
Printed per fault: pushes in, outcomes by kind (the sidecar's answers and
its /metrics), copies the simulator received, duplicates (call-ids it
delivered more than once), losses (pushes without an outcome, or reported
delivered and never seen by the simulator), pushes the sidecar resent for
an unknown fate, and the daemon's peak RSS.  The ``none`` row is the
baseline of the same run.

The overload row sends ``--overload-factor`` times the in-flight limit of
the default memory budget over ZeroMQ as fast as one sender can, while
every answer takes 2 s: shed and expired-at-ingress counts, the reader's
lag, peak RSS, and the time until a new push is delivered again.

    .venv/bin/python bench/fault_suite.py [--pushes 2000] [--concurrency 100] [--only cut,overload]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import trio  # noqa: E402

from bench import common  # noqa: E402

TOKEN = "0123456789abcdef" * 4


def retry_503_sequence() -> list[dict]:
    # One push in 20 gets 503 + Retry-After: 1 (in order of arrival at APNs).
    return ([{"status": 503, "headers": {"retry-after": "1"}}] + [{"status": 200}] * 19) * 200


#: fault name -> the simulator script that injects it
FAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "goaway": {"goaway_after": {"n": 250, "repeat": True, "kind": "apns"}, "delay": 0.02},
    "drop": {"drop_connection_after": {"n": 300, "repeat": True, "kind": "apns"}, "delay": 0.02},
    "cut": {"drop_connection_after": {"n": 300, "repeat": True, "kind": "apns", "after_answer": True},
            "delay": 0.02},
    "503": {"kind": "apns", "sequence": retry_503_sequence()},
    "delay2s": {"delay": 2.0},
}


def push_body(app_id: str, call_id: str) -> dict:
    return {"app-id": app_id, "platform": "apple", "token": TOKEN, "call-id": call_id,
            "from": "sip:alice@example.com", "to": "sip:bob@example.com", "event": "incoming_session",
            "media-type": "audio", "silent": True}


def metric_totals(text: str, name: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = collections.defaultdict(float)
    for match in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        value = re.search(rf'{label}="([^"]*)"', match.group(1))
        totals[value.group(1) if value else ""] += float(match.group(2))
    return dict(totals)


def metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


class Sidecar:
    """The daemon in its own process, with a config pointing at the simulator."""

    def __init__(self, folder: Path, creds: Any, sim_port: int, extra_server: str = ""):
        from sidecar.sim.cli import write_config

        self.port = common.free_port()
        config = write_config(folder / "config", creds, sim_port, sidecar_port=self.port)
        general = config / "general.ini"
        text = general.read_text().replace("[server]\n", "[server]\n" + extra_server, 1)
        general.write_text(text + f"\n[zmq]\nendpoint = ipc://{folder}/push.sock\nrun_dir = {folder}\n")
        self.zmq_endpoint = f"ipc://{folder}/push.sock"
        self.log = open(folder / "sidecar.log", "ab")
        self.process = subprocess.Popen([common.PYTHON, "-m", "sidecar", "--config-dir", str(config)],
                                        stdout=self.log, stderr=self.log, env=common.child_env(), cwd=common.ROOT)
        common.wait_for_port(self.port, 30, self.process)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> float:
        peak = common.peak_rss_mb(self.process.pid)
        common.stop_process(self.process)
        self.log.close()
        return peak


async def sim_control(sim: common.SimProcess, method: str, path: str, document: Any = None) -> Any:
    async with httpx.AsyncClient(verify=str(sim.ca_file), timeout=60) as client:
        reply = await client.request(method, f"https://127.0.0.1:{sim.port}{path}", json=document)
        reply.raise_for_status()
        return reply.json()


async def run_fault(name: str, args: argparse.Namespace, sim: common.SimProcess, folder: Path,
                    creds: Any) -> dict[str, Any]:
    app_id = f"{creds.token_bundle_id}.prod"
    await sim_control(sim, "POST", "/_sim/reset")
    sidecar = Sidecar(folder / name, creds, sim.port)
    answers: dict[str, int] = {}
    transport_errors: list[str] = []
    print(f"fault_suite: {name}...", file=sys.stderr, flush=True)
    try:
        # Idle connections expire before the server's 5 s keep-alive timeout: a
        # request sent as the server closes one would fail for reasons of HTTP/1.1.
        limits = httpx.Limits(max_connections=args.concurrency, keepalive_expiry=3.0)
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=120, limits=limits) as client:
            warm = await client.post("/push", json=push_body(app_id, f"{name}-warm"))
            assert warm.status_code == 200, warm.text
            await sim_control(sim, "POST", "/_sim/script", FAULTS[name])
            call_ids = iter(f"{name}-{i}" for i in range(args.pushes))
            started = time.monotonic()

            async def worker() -> None:
                for call_id in call_ids:
                    try:
                        reply = await client.post("/push", json=push_body(app_id, call_id))
                    except httpx.TransportError as exc:  # counted: the push may still have an outcome
                        transport_errors.append(f"{call_id}: {exc!r}")
                        continue
                    answers[call_id] = reply.status_code

            async with trio.open_nursery() as nursery:
                for _ in range(args.concurrency):
                    nursery.start_soon(worker)
            elapsed = time.monotonic() - started
            metrics = (await client.get("/metrics")).text
    finally:
        peak = sidecar.stop()
    records = (await sim_control(sim, "GET", "/_sim/requests?kind=apns"))["requests"]
    copies = collections.Counter(r["body"].get("call-id") for r in records
                                 if r.get("status") == 200 and r.get("outcome") != "refused")
    copies.pop(f"{name}-warm", None)
    outcomes = metric_totals(metrics, "pushsidecar_outcomes_total", "outcome")
    return {
        "pushes": args.pushes,
        "rate": args.pushes / elapsed,
        "answers": dict(collections.Counter(answers.values())),
        "outcomes": {k: int(v) for k, v in outcomes.items()},
        "outcomes_total": int(sum(outcomes.values())) - 1,  # less the warm-up push
        "sim_copies": sum(copies.values()),
        "duplicates": sum(n - 1 for n in copies.values() if n > 1),
        # No outcome (received != outcomes), or "delivered" and never seen by the simulator.
        "lost": max(0, int(metric_sum(metrics, "pushsidecar_pushes_received_total")
                           - metric_sum(metrics, "pushsidecar_outcomes_total")))
        + sum(1 for c, code in answers.items() if code == 200 and copies[c] == 0),
        "resent_unknown": int(metric_sum(metrics, "pushsidecar_resent_unknown_total")),
        "peak_rss_mb": peak,
        "http_errors": len(transport_errors),
        "http_error_sample": transport_errors[:3],
    }


async def run_overload(args: argparse.Namespace, sim: common.SimProcess, folder: Path, creds: Any) -> dict[str, Any]:
    from sidecar import wire
    from sidecar.budget import limits_for

    limit = limits_for(args.memory_budget).in_flight
    messages = int(limit * args.overload_factor)
    app_id = f"{creds.token_bundle_id}.prod"
    await sim_control(sim, "POST", "/_sim/reset")
    sidecar = Sidecar(folder / "overload", creds, sim.port, f"memory_budget_mb = {args.memory_budget}\n")
    sender = wire.Sender(sidecar.zmq_endpoint, sndhwm=messages + 10)
    try:
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=120) as client:
            warm = await client.post("/push", json=push_body(app_id, "overload-warm"))
            assert warm.status_code == 200, warm.text
            idle_rss = common.proc_status_kb("VmRSS", sidecar.process.pid) / 1024
            await sim_control(sim, "POST", "/_sim/script", {"delay": 2.0})
            started = time.monotonic()
            for i in range(messages):
                sender.send(wire.encode_direct("incoming_session", f"ov-{i}", "sip:a@example.com",
                                               "sip:b@example.com", app_id=app_id, platform="apple",
                                               token=TOKEN, media_type="audio"))
            sent_in = time.monotonic() - started

            def received() -> float:
                return metric_sum(text, "pushsidecar_pushes_received_total")

            text = (await client.get("/metrics")).text
            while received() < messages + 1 and time.monotonic() - started < 120:
                await trio.sleep(0.1)
                text = (await client.get("/metrics")).text
            read_in = time.monotonic() - started
            await sim_control(sim, "POST", "/_sim/script", {"delay": 0.0})
            while metric_sum(text, "pushsidecar_pushes_in_flight") > 0 and time.monotonic() - started < 120:
                await trio.sleep(0.1)
                text = (await client.get("/metrics")).text
            drained = time.monotonic()
            probe = await client.post("/push", json=push_body(app_id, "overload-probe"))
            recovered_in = time.monotonic() - drained
            text = (await client.get("/metrics")).text
    finally:
        sender.close()
        peak = sidecar.stop()
    outcomes = metric_totals(text, "pushsidecar_outcomes_total", "outcome")
    rejected = metric_totals(text, "pushsidecar_zmq_rejected_frames_total", "reason")
    return {
        "in_flight_limit": limit, "messages": messages, "sent_in_s": sent_in, "read_in_s": read_in,
        "outcomes": {k: int(v) for k, v in outcomes.items()},
        "shed": int(rejected.get("overloaded", 0)), "expired_at_ingress": int(rejected.get("expired", 0)),
        "idle_rss_mb": idle_rss, "peak_rss_mb": peak, "probe_status": probe.status_code,
        "probe_seconds": recovered_in,
    }


def print_faults(results: dict[str, dict[str, Any]]) -> None:
    kinds = ("delivered", "failed", "expired", "rejected", "dropped", "token_dead")
    header = f"{'fault':<9}{'in':>6}{'pushes/s':>10}" + "".join(f"{k:>11}" for k in kinds) \
        + f"{'sim copies':>12}{'dupl.':>7}{'lost':>6}{'resent?':>9}{'RSS MB':>8}{'HTTP err':>10}"
    print(header)
    for name, r in results.items():
        print(f"{name:<9}{r['pushes']:>6}{r['rate']:>10.0f}"
              + "".join(f"{r['outcomes'].get(k, 0) - (1 if k == 'delivered' else 0):>11}" for k in kinds)
              + f"{r['sim_copies']:>12}{r['duplicates']:>7}{r['lost']:>6}{r['resent_unknown']:>9}"
              f"{r['peak_rss_mb']:>8.0f}{r['http_errors']:>10}")
    for name, r in results.items():
        if r["http_errors"]:
            print(f"  {name}: HTTP client errors, e.g. {r['http_error_sample']}")
    base = results.get("none")
    if base:
        print("pushes/s relative to 'none' (same run): "
              + ", ".join(f"{n} x{r['rate'] / base['rate']:.2f}" for n, r in results.items() if n != "none"))


async def main_async(args: argparse.Namespace) -> None:
    from sidecar.sim.creds import load_credentials

    only = set(args.only.split(",")) if args.only else set(FAULTS) | {"overload"}
    with common.temp_dir("bench-faults-") as folder, \
            common.simulator(folder, max_records=args.pushes * 3 + 100) as sim:
        creds = load_credentials(sim.creds_dir)
        results = {}
        for name in FAULTS:
            if name in only:
                results[name] = await run_fault(name, args, sim, folder, creds)
                if args.json:
                    print(json.dumps({name: results[name]}))
        if results:
            print(f"\nFault suite: {args.pushes} pushes per fault over HTTP, concurrency {args.concurrency}")
            print_faults(results)
        if "overload" in only:
            r = await run_overload(args, sim, folder, creds)
            if args.json:
                print(json.dumps({"overload": r}))
            print(f"\nOverload: {r['messages']} ZeroMQ messages ({args.overload_factor:g}x the in-flight "
                  f"limit {r['in_flight_limit']} of memory_budget_mb = {args.memory_budget}), answers take 2 s")
            print(f"  sent in {r['sent_in_s']:.1f} s, all read in {r['read_in_s']:.1f} s; "
                  f"shed at once {r['shed']}, expired before being read {r['expired_at_ingress']}")
            print(f"  outcomes {r['outcomes']}")
            print(f"  RSS idle {r['idle_rss_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB; "
                  f"after the overload a new push answered {r['probe_status']} in {r['probe_seconds'] * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=2000, help="pushes per fault (default 2000)")
    parser.add_argument("--concurrency", type=int, default=100, help="HTTP requests in flight (default 100)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join([*FAULTS, 'overload'])}")
    parser.add_argument("--memory-budget", type=int, default=160, help="memory_budget_mb of the overload run")
    parser.add_argument("--overload-factor", type=float, default=5.0, help="messages / in-flight limit (default 5)")
    parser.add_argument("--json", action="store_true", help="also print each result as a JSON line")
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
