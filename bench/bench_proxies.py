"""Benchmark of the proxy path: each real proxy + the sidecar + the APNs simulator.

For Kamailio 5.6 (Debian) and OpenSIPS 3.4 and 3.6 (built from ../shared/vendor
by scripts/build_opensips.sh), each started from its example configuration.
Everything runs on loopback with free ports and a temporary folder, and stops
by itself: the simulator (``python -m sidecar.sim``, recording to a file) and
the sidecar (``python -m sidecar``) as subprocesses, the proxy with 4 workers
and a 3 s wait (so unanswered calls end with 480, and a cancel push; a push that
reaches the sidecar later than that has outlived its call and is dropped as
expired, by design: it counts as missing here), sipp as
the caller (``tests/integration/sipp/bench_caller.xml``) calling one phone
registered with Linphone's RFC 8599 parameters that never wakes up.

Three figures per proxy:

a. **Per-call cost in the proxy's processes**: the proxy started with
   ``PUSHSIDECAR_BENCH_TIMING``; the script times its two calls per INVITE
   (``wire.CallTimer``: Kamailio ``invite_prepare`` + ``send_prepared``, both
   in the SIP worker; OpenSIPS ``sidecar_ready`` in the SIP worker + ``push``
   in the process that runs the E_UL_CONTACT_REFRESH route) and, as
   baselines of the same calls, ``Sender.send`` alone and an empty timed
   region.
b. **Sustained calls/s with zero loss**: sipp at fixed rates; every call must
   get 110 then 480, and the simulator must have recorded exactly one
   accepted call push per call (Call-IDs compared one by one).
c. **INVITE-to-push latency** at the first rate: sipp logs each INVITE's send
   time, the simulator each push's receive time (same machine clock).

Run (prints a report; ``--json FILE`` also writes the figures; exit status 1
when a target is missed, 2 when no proxy or sipp is found)::

    .venv/bin/python bench/bench_proxies.py [--proxies kamailio,opensips-3.4,opensips-3.6]

Targets: Kamailio per-call p50 <= 20 us; >= 2,000 calls/s with zero loss;
INVITE-to-push p99 < 20 ms at 1,000 calls/s.
"""

from __future__ import annotations

import collections
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from proxy_fixtures import (  # noqa: E402
    PROXIES, SIPP, SIPP_DIR, Proxy, _tool, free_udp_port, opensips_prefix, start_kamailio, start_opensips,
)

VOIP_TOKEN = "AB" * 32  # uppercase hex, as iOS hands tokens to Linphone
REMOTE_TOKEN = "CD" * 32
WAIT_MS = 3000  # how long the proxy holds each unanswered call before its 480, and its push lives
CHILDREN = 4  # Kamailio children; opensips.cfg has udp_workers=4


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; values need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --------------------------------------------------------------------------
# The simulator and the sidecar as processes


class Proc:
    """A child process with its output in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], log: Path, **kwargs) -> None:
        self.name = name
        self.log_path = log
        self.process = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        common.stop_process(self.process, timeout=15)


def wait_for(predicate, timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.log()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}" + (f":\n{proc.log()[-3000:]}" if proc else ""))


def start_simulator(tmp: Path) -> tuple[Proc, int, Path]:
    record = tmp / "sim-records.jsonl"
    sim = Proc("simulator", [sys.executable, "-m", "sidecar.sim", "--creds-dir", str(tmp / "creds"),
                             "--record", str(record), "--write-config", str(tmp / "config"),
                             "--sidecar-port", "0", "--max-records", "0"],
               tmp / "simulator.log", cwd=tmp)
    wait_for(lambda: '"port"' in sim.log(), 30, "the simulator's port line", sim)
    line = next(ln for ln in sim.log().splitlines() if ln.startswith("{"))
    return sim, json.loads(line)["port"], record


def write_sidecar_config(tmp: Path, sim_port: int, endpoint: str):
    """Add the ZeroMQ endpoint and the RFC 8599 applications to the sim's config."""
    from sidecar.sim.cli import rfc8599_applications
    from sidecar.sim.creds import ensure_credentials

    creds = ensure_credentials(tmp / "creds")
    config = tmp / "config"
    general = config / "general.ini"
    general.write_text(general.read_text() + f"\n[zmq]\nendpoint = {endpoint}\nrun_dir = {tmp}\n")
    apps = config / "applications.ini"
    apps.write_text(apps.read_text() + rfc8599_applications(creds, sim_port))
    pn = (f"pn-prid={VOIP_TOKEN}:voip&{REMOTE_TOKEN}:remote;pn-provider=apns;"
          f"pn-param={creds.team_id}.{creds.token_bundle_id}.voip&remote;pn-silent=1;pn-timeout=0;"
          "pn-msg-str=IM_MSG;pn-call-str=IC_MSG;pn-groupchat-str=GC_MSG;pn-call-snd=notes_of_the_forest.caf;"
          "pn-msg-snd=msg.caf")
    return config, pn


def start_bench_proxy(name: str, tmp: Path, endpoint: str, env: dict[str, str] | None = None) -> Proxy:
    if name == "kamailio":
        return start_kamailio(tmp, endpoint=endpoint, wait_ms=WAIT_MS, children=CHILDREN, shm_mb=256, env=env)
    return start_opensips(tmp, name, endpoint=endpoint, wait_ms=WAIT_MS, env=env, shm_mb=256)


def start_sidecar(tmp: Path, config: Path) -> Proc:
    sidecar = Proc("sidecar", [sys.executable, "-m", "sidecar", "--config-dir", str(config)],
                   tmp / "sidecar.log", cwd=tmp)
    wait_for(lambda: "pushsidecar ready" in sidecar.log(), 30, "the sidecar", sidecar)
    return sidecar


# --------------------------------------------------------------------------
# sipp


def run_sipp(tmp: Path, name: str, scenario: str, kam: Proxy, *, calls: int, rate: int,
             keys: dict[str, str], timeout: float) -> tuple[int, Path, str]:
    """Run sipp to the end (no message trace: it would slow sipp down); return
    (exit status, its -trace_logs file, its screen output).  Calls last the
    proxy's wait, so sipp may hold rate x (wait + 2 s) of them open: a lower
    limit throttles it below the asked rate."""
    folder = tmp / f"sipp-{name}"
    folder.mkdir()
    log_file = folder / "calls.log"
    args = [SIPP, f"127.0.0.1:{kam.port}", "-sf", str(SIPP_DIR / scenario), "-i", "127.0.0.1",
            "-p", str(free_udp_port()), "-mp", str(free_udp_port(4)), "-cp", str(free_udp_port()),
            "-m", str(calls), "-r", str(rate), "-l", str(max(100, int(rate * (WAIT_MS / 1000 + 2)))),
            "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin",
            "-buff_size", "4194304",  # the default 64 kB overflows (lost replies) when sipp stalls
            "-trace_logs", "-log_file", str(log_file), "-trace_err", "-error_file", str(folder / "errors.log")]
    for key, value in keys.items():
        args += ["-key", key, value]
    with (folder / "stdout.log").open("wb") as out:
        try:
            code = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=folder, timeout=timeout + 15).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return code, log_file, (folder / "stdout.log").read_text(errors="replace")


def register(tmp: Path, kam: Proxy, user: str, pn: str) -> None:
    contact = (f"<sip:{user}@127.0.0.1:{free_udp_port()};transport=udp;{pn}>"
               ';+sip.instance="<urn:uuid:00000000-0000-4000-8000-00000000b1e5>"')
    code, _, screen = run_sipp(tmp, f"register-{kam.name}-{user}", "register_contact.xml", kam, calls=1,
                               rate=1, keys={"user": user, "contact": contact, "expires": "3600",
                                             "user_agent": "LinphoneiOS/5.2"}, timeout=15)
    if code != 0:
        raise RuntimeError(f"REGISTER of {user} failed ({code}):\n{screen[-3000:]}")


def invite_times(log_file: Path) -> dict[str, float]:
    """Call-ID -> UNIX time the INVITE was sent (first send; ignores retransmissions)."""
    times: dict[str, float] = {}
    if not log_file.exists():
        return times
    for line in log_file.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 4 and "@" in parts[0]:
            times.setdefault(parts[0], float(parts[-1]))
    return times


def sidecar_received_times(log_path: Path, call_ids: set[str]) -> dict[str, float]:
    """Call-ID -> UNIX time of the sidecar's ``event=received`` log line (ms resolution)."""
    times: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if "event=received" not in line or "push_event=incoming_session" not in line:
            continue
        start = line.find(" call_id=")
        call_id = line[start + 9:].split(" ", 1)[0] if start >= 0 else ""
        if call_id in call_ids and call_id not in times:
            stamp, _, millis = line[:23].partition(".")
            times[call_id] = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    return times


def sidecar_call_outcomes(log_path: Path, call_ids: set[str]) -> dict[str, int]:
    """How the sidecar ended the call pushes (not the cancels) of ``call_ids``:
    outcome kind -> count, from its ``event=received`` and ``event=outcome``
    lines.  A push shed at once under overload has an outcome line (``dropped``)
    but no ``received`` line, so its event is unknown: a call whose call push
    has no outcome counts that drop."""
    call_push_requests: set[str] = set()
    ended: dict[str, str] = {}
    shed: set[str] = set()
    for line in log_path.read_text(errors="replace").splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        call_id = fields.get("call_id")
        if call_id not in call_ids:
            continue
        request_id = fields.get("request_id", "")
        if fields.get("event") == "received" and fields.get("push_event") == "incoming_session":
            call_push_requests.add(request_id)
        elif fields.get("event") == "outcome":
            if request_id in call_push_requests:
                ended[call_id] = fields.get("kind", "?")
            elif fields.get("kind") == "dropped":
                shed.add(call_id)
    kinds = collections.Counter(ended.values())
    kinds["dropped"] += len(shed - ended.keys())
    return {kind: n for kind, n in kinds.items() if n}


def failed_calls(screen: str) -> int:
    """sipp's cumulative "Failed call" count from its final screen."""
    for line in reversed(screen.splitlines()):
        if line.strip().startswith("Failed call"):
            return int(line.split("|")[2].split()[0])
    return -1


# --------------------------------------------------------------------------
# The simulator's records


class SimRecords:
    """Reads the simulator's JSON-lines record file as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pushes: dict[str, list[tuple[float, int]]] = {}  # call-id -> [(time, status)]

    def poll(self) -> int:
        """Read new complete lines; return how many APNs pushes were read in total."""
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for line in data[:end].splitlines():
                record = json.loads(line)
                body = record.get("body") if record.get("kind") == "apns" else None
                if body and body.get("event") == "incoming_session":  # not the cancels after each 480
                    self.pushes.setdefault(body["call-id"], []).append((record["time"], record["status"]))
        return sum(len(v) for v in self.pushes.values())

    def settle(self, call_ids: set[str], timeout: float = 30.0) -> None:
        """Wait until every call has a push, or nothing new came for 3 s."""
        deadline = time.monotonic() + timeout
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.poll()
            if call_ids <= self.pushes.keys():
                time.sleep(0.5)  # a duplicate would arrive now
                self.poll()
                return
            if count != last:
                last, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since > 3.0:
                return
            time.sleep(0.1)


# --------------------------------------------------------------------------
# The phases


def per_call_cost(name: str, tmp: Path, endpoint: str, pn: str, calls: int, rate: int) -> dict:
    """(a): the script's own timing inside the real proxy's processes."""
    timing = tmp / f"timing-{name}" / "t"
    timing.parent.mkdir()
    kam = start_bench_proxy(name, tmp / f"{name}-timed", endpoint, env={"PUSHSIDECAR_BENCH_TIMING": str(timing)})
    try:
        register(tmp, kam, "timed", pn)
        code, _, screen = run_sipp(tmp, f"{name}-timed", "bench_caller.xml", kam, calls=calls, rate=rate,
                                   keys={"callee": "timed"}, timeout=calls / rate + 30)
    finally:
        kam.stop()
    record = struct.Struct("<7q")  # the layout written by wire.CallTimer
    samples = []
    for path in timing.parent.glob("t.*"):
        data = path.read_bytes()
        samples += [record.unpack_from(data, i) for i in range(0, len(data) - record.size + 1, record.size)]

    def stats(values_ns: list[int]) -> dict:
        values = [v / 1000.0 for v in values_ns]
        return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}

    return {
        "calls": calls, "rate": rate, "samples": len(samples),
        "workers": len(list(timing.parent.glob("t.*"))),
        "sipp_exit": code, "failed_calls": failed_calls(screen),
        "wall_per_call_us": stats([s[0] + s[1] for s in samples]),
        "wall_sender_send_alone_us": stats([s[2] for s in samples]),
        "wall_empty_region_us": stats([s[3] for s in samples]),
        "cpu_per_call_us": stats([s[4] + s[5] for s in samples]),
        "cpu_empty_region_us": stats([s[6] for s in samples]),
    }


def sustained(tmp: Path, kam: Proxy, records: SimRecords, pn: str, rate: int, seconds: float,
              sidecar_log: Path) -> dict:
    """(b) and (c): one fixed-rate run; loss and INVITE-to-push latency."""
    calls = int(rate * seconds)
    user = f"rate{rate}"
    register(tmp, kam, user, pn)
    dropped_before = kam.log().count(" dropped: ")
    code, log_file, screen = run_sipp(tmp, f"{kam.name}-rate{rate}", "bench_caller.xml", kam, calls=calls,
                                      rate=rate, keys={"callee": user}, timeout=seconds + 60)
    sent = invite_times(log_file)
    # Every call push ends in one outcome: wait for the sidecar to have logged
    # them all (a backlog is still being worked through after sipp ends).
    deadline = time.monotonic() + WAIT_MS / 1000 + 30
    while sum(sidecar_call_outcomes(sidecar_log, set(sent)).values()) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.5)
    records.settle(set(sent))
    pushed = {c: records.pushes.get(c, []) for c in sent}
    ok = [c for c, got in pushed.items() if [s for _, s in got] == [200]]
    missing = sum(1 for got in pushed.values() if not got)
    duplicated = sum(1 for got in pushed.values() if len(got) > 1)
    latency_ms = [(pushed[c][0][0] - sent[c]) * 1000 for c in ok]
    # Where the time goes: INVITE -> the sidecar's "received" log line (ms resolution).
    received = sidecar_received_times(sidecar_log, set(sent))
    to_sidecar_ms = [(received[c] - sent[c]) * 1000 for c in received]
    outcomes = sidecar_call_outcomes(sidecar_log, set(sent))
    first, last = (min(sent.values()), max(sent.values())) if sent else (0.0, 0.0)
    return {
        "target_rate": rate, "calls": calls, "invites_sent": len(sent),
        "achieved_rate": round((len(sent) - 1) / (last - first), 1) if last > first else None,
        "sipp_exit": code, "failed_calls": failed_calls(screen),
        "pushes_ok": len(ok), "missing": missing, "duplicated": duplicated, "sidecar_outcomes": outcomes,
        "not_200": sum(1 for got in pushed.values() if got and any(s != 200 for _, s in got)),
        "proxy_drop_lines": kam.log().count(" dropped: ") - dropped_before,
        "latency_ms": {"p50": percentile(latency_ms, 0.5), "p99": percentile(latency_ms, 0.99),
                       "max": max(latency_ms) if latency_ms else float("nan")},
        "invite_to_sidecar_received_ms": {"p50": percentile(to_sidecar_ms, 0.5),
                                          "p99": percentile(to_sidecar_ms, 0.99)},
    }


def available(names: list[str]) -> tuple[list[str], list[str]]:
    """(the proxies found here, a line per proxy missing)."""
    found, missing = [], []
    for name in names:
        if name == "kamailio":
            absent = [t for t in ("kamailio", "sipp") if _tool(t) is None]
        else:
            absent = [] if opensips_prefix(name) else [f"{name} (bash scripts/build_opensips.sh)"]
        (missing if absent else found).append(name if not absent else f"{name}: missing {', '.join(absent)}")
    return found, missing


def bench_proxy(name: str, tmp: Path, endpoint: str, pn: str, records: SimRecords, args) -> dict:
    print(f"[{name}] (a) per-call cost: {args.timing_calls} calls at 1000/s, timed in the proxy", flush=True)
    result: dict = {"per_call": per_call_cost(name, tmp, endpoint, pn, args.timing_calls, 1000)}
    records.poll()
    proxy = start_bench_proxy(name, tmp / name, endpoint)
    try:
        result["sustained"] = []
        for rate in args.rate_list:
            print(f"[{name}] (b) {rate} calls/s for {args.seconds:g} s", flush=True)
            result["sustained"].append(sustained(tmp, proxy, records, pn, rate, args.seconds,
                                                 tmp / "sidecar.log"))
    finally:
        proxy.stop()
    result["traceback"] = "Traceback" in proxy.log()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxies", default=",".join(PROXIES),
                        help=f"which proxies (default {','.join(PROXIES)}; those not found are said and skipped)")
    parser.add_argument("--rates", default="1000,2000",
                        help="calls/s of the sustained runs; the first one gives the latency (default 1000,2000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each sustained run (default 10)")
    parser.add_argument("--timing-calls", type=int, default=5000, help="calls timed for (a) (default 5000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (created, then kept: logs, records) instead of a temporary folder")
    args = parser.parse_args(argv)
    args.rate_list = [int(r) for r in args.rates.split(",")]
    names, missing = available(args.proxies.split(","))
    for line in missing:
        print(f"bench_proxies: skipped {line}", file=sys.stderr)
    if not names:
        return 2

    results: dict = {"machine": {"cpus": os.cpu_count()}, "workers": CHILDREN, "wait_ms": WAIT_MS,
                     "skipped": missing, "proxies": {}}
    with tempfile.TemporaryDirectory(prefix="bench-proxies-") as tmp_name:
        tmp = Path(tmp_name)
        if args.keep:
            args.keep.mkdir(parents=True)
            tmp = args.keep.absolute()
        endpoint = f"ipc://{tmp}/push.sock"
        procs: list = []
        try:
            sim, sim_port, record_file = start_simulator(tmp)
            procs.append(sim)
            config, pn = write_sidecar_config(tmp, sim_port, endpoint)
            procs.append(start_sidecar(tmp, config))
            records = SimRecords(record_file)
            for name in names:
                results["proxies"][name] = bench_proxy(name, tmp, endpoint, pn, records, args)
        finally:
            for proc in reversed(procs):
                proc.stop()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if targets_met(results) else 1


def proxy_targets(name: str, result: dict) -> dict[str, bool]:
    runs = result["sustained"]
    lossless = [r for r in runs if r["missing"] == 0 and r["duplicated"] == 0 and r["not_200"] == 0
                and r["sipp_exit"] == 0 and r["invites_sent"] == r["calls"]]
    targets = {
        "2000_cps_zero_loss": any(r["target_rate"] >= 2000 for r in lossless),
        "latency_p99_lt_20ms_at_1000cps": bool(runs) and runs[0]["target_rate"] <= 1000
        and runs[0]["latency_ms"]["p99"] < 20,
    }
    if name == "kamailio":
        targets["per_call_p50_le_20us"] = result["per_call"]["wall_per_call_us"]["p50"] <= 20
    return targets


def targets_met(results: dict) -> bool:
    met = True
    for name, result in results["proxies"].items():
        result["targets"] = proxy_targets(name, result)
        met = met and all(result["targets"].values()) and not result["traceback"]
    return met


def report(results: dict) -> None:
    targets_met(results)
    print(f"\n== proxy + sidecar + APNs simulator (loopback, {results['machine']['cpus']} CPUs, "
          f"{results['workers']} proxy workers, calls held {results['wait_ms']} ms then 480 + cancel push)")
    calls = {"kamailio": "invite_prepare + send_prepared", "opensips": "sidecar_ready + push"}
    for name, result in results["proxies"].items():
        a = result["per_call"]
        label = calls["kamailio" if name == "kamailio" else "opensips"]
        print(f"[{name}] (a) per-call cost ({a['samples']} calls in {a['workers']} processes, "
              f"sipp exit {a['sipp_exit']}):")
        for key, text in (("wall_per_call_us", f"{label}, wall"),
                          ("wall_sender_send_alone_us", "  of which Sender.send alone, wall"),
                          ("wall_empty_region_us", "  empty timed region, wall"),
                          ("cpu_per_call_us", f"{label}, CPU"),
                          ("cpu_empty_region_us", "  empty timed region, CPU")):
            print(f"    {text:40s} p50 {a[key]['p50']:7.1f} us   p99 {a[key]['p99']:7.1f} us")
        for r in result["sustained"]:
            print(f"[{name}] (b) {r['target_rate']} calls/s: {r['invites_sent']}/{r['calls']} INVITEs "
                  f"(achieved {r['achieved_rate']}/s), sipp exit {r['sipp_exit']}, failed calls "
                  f"{r['failed_calls']}, pushes ok {r['pushes_ok']}, missing {r['missing']}, duplicated "
                  f"{r['duplicated']}, non-200 {r['not_200']}, drop lines in the proxy log {r['proxy_drop_lines']}")
            ended = ", ".join(f"{kind} {n}" for kind, n in sorted(r["sidecar_outcomes"].items())) or "none logged"
            unended = r["invites_sent"] - sum(r["sidecar_outcomes"].values())
            print(f"    the sidecar's outcomes of these call pushes: {ended}; without an outcome: {unended}")
            lat = r["latency_ms"]
            print(f"    INVITE-to-push p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms"
                  f"  (INVITE to sidecar 'received' log line: p50 {r['invite_to_sidecar_received_ms']['p50']:.0f} ms"
                  f"  p99 {r['invite_to_sidecar_received_ms']['p99']:.0f} ms)")
        print(f"[{name}] targets: " + ", ".join(f"{k} {'OK' if v else 'MISSED'}"
                                                for k, v in result["targets"].items()))
    for line in results["skipped"]:
        print(f"skipped {line}")


if __name__ == "__main__":
    sys.exit(main())
