"""Overload sheds early and recovers (bounded: a few thousand messages, about 10 s).

A sidecar with the smallest memory budget (in-flight limit ~1800 pushes)
gets 5000 ZeroMQ messages at once while the simulator takes 2 s per answer.
The reader must shed what does not fit at once (counted, one ``dropped``
outcome each), never let a message wait past its time to live, deliver the
rest, and serve new pushes normally as soon as the service is fast again.
"""

from __future__ import annotations

import re
import time

import httpx
import trio

from sidecar import wire
from sidecar.budget import limits_for
from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import running_sidecar, sidecar_config
from test_goaway_end_to_end import call_body
from test_ingress_auth import direct_frame, with_server_options

MESSAGES = 5000


def total(text: str, name: str, **labels: str) -> float:
    found = 0.0
    for match in re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            found += float(match.group(2))
    return found


async def test_overload_sheds_at_once_and_recovers(
    tmp_path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config = with_server_options(sidecar_config(tmp_path, sim_credentials, sim.port), "memory_budget_mb = 32")
    limit = limits_for(32).in_flight
    assert limit < MESSAGES / 2
    async with running_sidecar(config) as handle:
        async with httpx.AsyncClient(base_url=handle.http_url, timeout=60) as client:
            warm = direct_frame("warm", sim_credentials)
            sender = wire.Sender(handle.zmq_endpoint, sndhwm=MESSAGES * 2)
            sender.send(warm)
            with trio.fail_after(20):
                while not sim.requests:
                    await trio.sleep(0.05)
            sim.delay = 2.0
            started = time.monotonic()
            for i in range(MESSAGES):
                assert sender.send(direct_frame(f"o{i}", sim_credentials))
            counters = handle.runtime.proxy_ingress.counters
            with trio.fail_after(30):
                while counters.frames < MESSAGES + 1:
                    await trio.sleep(0.02)
            read_in = time.monotonic() - started
            assert read_in < 10, f"the reader fell {read_in:.1f} s behind"
            assert counters.shed >= MESSAGES - limit - 50 and counters.expired == 0
            assert handle.runtime.dispatcher.in_flight <= limit
            # Recovery: the service is fast again; the pushes in flight end, new ones go through.
            sim.delay = 0.0
            with trio.fail_after(30):
                while handle.runtime.dispatcher.in_flight:
                    await trio.sleep(0.05)
            probe = await client.post("/push", json=call_body(sim_credentials, "after"))
            assert probe.status_code == 200, probe.text
            sender.close()
            metrics = (await client.get("/metrics")).text
    received = total(metrics, "pushsidecar_pushes_received_total")
    assert received == MESSAGES + 2 == total(metrics, "pushsidecar_outcomes_total")
    dropped = total(metrics, "pushsidecar_outcomes_total", outcome="dropped")
    delivered = total(metrics, "pushsidecar_outcomes_total", outcome="delivered")
    assert dropped == counters.shed and delivered == MESSAGES + 2 - dropped
    assert total(metrics, "pushsidecar_zmq_rejected_frames_total", reason="overloaded") == counters.shed
