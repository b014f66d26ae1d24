"""GOAWAY with answers that come after it, through the whole sidecar.

APNs may announce GOAWAY with a ``last_stream_id`` and only then answer the
streams up to it (RFC 9113 section 6.8).  Those pushes were processed: their
answers must be read and reported as delivered, never resent; the streams
above ``last_stream_id`` were not processed and must be resent on a new
connection.  Either way, each push reaches the phone exactly once.
"""

from __future__ import annotations

import collections

import httpx
import trio

from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import TOKEN

PUSHES = 200
PROCESSED = 100  # streams 3, 5, ... 201 on the first connection


def call_body(creds: SimCredentials, call_id: str) -> dict:
    return {
        "app-id": f"{creds.token_bundle_id}.prod", "platform": "apple", "token": TOKEN,
        "call-id": call_id, "from": "sip:alice@example.com", "to": "sip:bob@example.com",
        "event": "incoming_session", "media-type": "audio", "silent": True,
    }


async def test_answers_after_goaway_are_delivered_and_nothing_is_sent_twice(
    client: httpx.AsyncClient, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    # Warm the connection (stream 1) so Apple's one-stream limit is lifted.
    warm = await client.post("/push", json=call_body(sim_credentials, "warm"))
    assert warm.status_code == 200, warm.text
    [first] = [r for r in sim.requests if r["kind"] == "apns"]
    assert first["stream"] == 1
    # Every answer waits 0.5 s, so the GOAWAY (sent when stream 201 arrives)
    # goes out before any of the answers it promises; streams above 201 are
    # held unanswered, as a server shutting down does.
    last_stream_id = 1 + 2 * PROCESSED
    sim.delay = 0.5
    sim.goaway_after(PROCESSED, last_stream_id=last_stream_id, kind="apns")
    answers: dict[str, int] = {}

    async def send(i: int) -> None:
        reply = await client.post("/push", json=call_body(sim_credentials, f"g{i}"))
        answers[f"g{i}"] = reply.status_code

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(PUSHES):
                nursery.start_soon(send, i)

    assert collections.Counter(answers.values()) == {200: PUSHES}
    records = [r for r in sim.requests if r["kind"] == "apns" and r["body"]["call-id"] != "warm"]
    delivered = collections.Counter(r["body"]["call-id"] for r in records if r["status"] == 200)
    assert delivered == {call_id: 1 for call_id in answers}  # each exactly once
    on_first = [r for r in records if r["connection"] == first["connection"]]
    answered_first = {r["stream"] for r in on_first if r["status"] == 200}
    # The promised streams were answered after the GOAWAY and kept (streams
    # above last_stream_id are ignored by the server, so unrecorded, or
    # recorded as refused); the others were resent on the next connection.
    assert answered_first == set(range(3, last_stream_id + 1, 2))
    assert all(r.get("outcome") == "refused" for r in on_first if r["stream"] > last_stream_id)
    resent = {r["body"]["call-id"] for r in records if r["connection"] != first["connection"]}
    kept = {r["body"]["call-id"] for r in on_first if r["status"] == 200}
    assert len(resent) == PUSHES - PROCESSED and not resent & kept
    stats = sim.stats()
    assert stats.goaways_sent == 1
    assert stats.connections_accepted == 2
