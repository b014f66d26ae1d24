"""In-flight limits and queue sizes derived from one memory budget ([server] memory_budget_mb).

Why one number: what grows under overload is pushes in flight (a task, the
Push, its notification, an HTTP/2 stream and its answer) and messages queued
in the ZeroMQ socket.  Sizing both from the budget keeps the RSS under it at
any overload: beyond the limit, pushes are dropped at once and counted.

The per-item costs are measured by ``bench/fault_suite.py --overload`` (RSS
growth divided by pushes in flight), with headroom; BASE_MB is the RSS of an
idle sidecar with a few applications.
"""

from __future__ import annotations

import dataclasses

BASE_MB = 70  # an idle daemon: interpreter, FastAPI, h2, prometheus, TLS contexts
IN_FLIGHT_KB = 12.0  # one push in flight: measured 11.8 KB (bench/fault_suite.py, overload row)
ZMQ_FRAME_KB = 1.0  # one queued ZeroMQ message (frame + libzmq bookkeeping), estimated
ZMQ_SHARE = 0.1  # of the budget above BASE_MB, for the ZeroMQ receive queue


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    in_flight: int  # pushes in progress before new ones are dropped
    zmq_queue: int  # ZMQ_RCVHWM of the PULL socket


def limits_for(budget_mb: int) -> Limits:
    """The limits for a memory budget in MB (pure)."""
    spare_kb = max(budget_mb - BASE_MB, 16) * 1024
    zmq_queue = int(spare_kb * ZMQ_SHARE / ZMQ_FRAME_KB)
    in_flight = int(spare_kb * (1 - ZMQ_SHARE) / IN_FLIGHT_KB)
    return Limits(in_flight=max(in_flight, 100), zmq_queue=max(zmq_queue, 1000))
