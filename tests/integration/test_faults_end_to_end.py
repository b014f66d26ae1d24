"""Connection faults through the whole sidecar: nothing lost, nothing doubled.

The simulator cuts the connection (TCP RST) right after answering a stream,
while other pushes are in flight on it.  The cut stream's answer is in our
receive buffer when the next write fails: it must be read and reported as
delivered, never resent.  Streams the server never answered have an unknown
fate: each is resent at most once (``resent_unknown``), and those are the
only pushes that may reach the phone twice.
"""

from __future__ import annotations

import collections
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from sidecar.service import SidecarHandle
from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import running_sidecar, sidecar_config
from test_daemon import set_server_options
from test_goaway_end_to_end import call_body

PUSHES = 300


@pytest.fixture(params=["hypercorn", "fast"])
async def sidecar(request: pytest.FixtureRequest, tmp_path: Path, sim: Simulator,
                  sim_credentials: SimCredentials) -> AsyncIterator[SidecarHandle]:
    """The sidecar on each HTTP server: how many streams are in flight at a cut
    depends on how fast the ingress admits pushes."""
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    set_server_options(config_dir, http_server=request.param)
    async with running_sidecar(config_dir) as handle:
        yield handle


def metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def test_cut_after_answer_delivers_read_answers_and_resends_unknown_once(
    client: httpx.AsyncClient, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    warm = await client.post("/push", json=call_body(sim_credentials, "warm"))
    assert warm.status_code == 200, warm.text
    # Answers take 50 ms, so many streams are in flight when every 40th
    # stream is answered and the connection is cut right after.
    sim.delay = 0.05
    sim.drop_connection_after(39, repeat=True, kind="apns", after_answer=True)
    answers: dict[str, int] = {}

    async def send(i: int) -> None:
        reply = await client.post("/push", json=call_body(sim_credentials, f"c{i}"))
        answers[f"c{i}"] = reply.status_code

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(PUSHES):
                nursery.start_soon(send, i)
                if i % 20 == 0:
                    await trio.sleep(0.01)

    assert len(answers) == PUSHES
    records = [r for r in sim.requests if r["kind"] == "apns" and r["body"]["call-id"] != "warm"]
    seen = collections.Counter(r["body"]["call-id"] for r in records)
    cut_records = [r for r in records if r.get("outcome") == "cut"]
    assert cut_records, "the fault never fired"
    # The first cut stream of each connection was answered before the cut (a
    # later one on the same connection may have been cut before its answer).
    first_cut: dict[int, dict] = {}
    for r in cut_records:
        if r["connection"] not in first_cut or r["stream"] < first_cut[r["connection"]]["stream"]:
            first_cut[r["connection"]] = r
    cut = {r["body"]["call-id"] for r in first_cut.values()}
    # An answer that reached us before the cut is final: never resent.  That
    # copy may itself be the resend of a push cut on an earlier connection (the
    # faster the ingress, the more streams are in flight at each cut), so what
    # holds is that no copy was sent after it.
    last_copy = {r["body"]["call-id"]: r["seq"] for r in sorted(records, key=lambda r: r["seq"])}
    resent_after_answer = {r["body"]["call-id"]: seen[r["body"]["call-id"]]
                           for r in first_cut.values() if last_copy[r["body"]["call-id"]] != r["seq"]}
    assert not resent_after_answer, resent_after_answer
    assert all(answers[call_id] == 200 for call_id in cut), {c: answers[c] for c in cut}
    # Only pushes resent for an unknown fate were seen twice, and none more.
    metrics = (await client.get("/metrics")).text
    resent = metric(metrics, "pushsidecar_resent_unknown_total")
    twice = {call_id for call_id, n in seen.items() if n > 1}
    assert max(seen.values()) <= 2
    assert len(twice) <= resent
    # A resent copy carries the same apns-id: APNs and the app can recognise it.
    ids: dict[str, set[str]] = collections.defaultdict(set)
    for r in records:
        ids[r["body"]["call-id"]].add(r["headers"]["apns-id"])
    assert all(len(found) == 1 for found in ids.values())
    assert len({next(iter(found)) for found in ids.values()}) == len(ids)
    # Nothing lost: every push has one outcome.  A push whose fate was unknown
    # twice is not resent a second time: failed (502), never a third copy.
    outcomes = metric(metrics, "pushsidecar_outcomes_total")
    assert outcomes == PUSHES + 1
    not_delivered = {c: code for c, code in answers.items() if code != 200}
    assert set(not_delivered.values()) <= {502}, not_delivered
    assert len(not_delivered) <= resent
