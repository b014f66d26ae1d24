"""The control API under ``/_sim/``, for tests and demos in another process.

- ``GET /_sim/requests[?since=SEQ][&kind=apns|fcm|oauth]``: recorded requests.
- ``GET /_sim/stats``: counters.
- ``POST /_sim/reset``: forget records, scripts, token fates and counters.
- ``POST /_sim/script``: a JSON object with any of ``kind`` + ``sequence``
  (list of faults: ``{"status", "headers", "reason", "delay", "reset",
  "drop"}``), ``dead_tokens``, ``bad_tokens``, ``token_topics``,
  ``token_projects``, ``delay``, ``goaway_after`` (``{"n", "last_stream_id",
  "error_code", "repeat", "kind"}``), ``drop_connection_after`` (``{"n",
  "repeat", "kind", "after_answer"}`` or a number), ``expire_access_tokens`` (true).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .exchange import Incoming, Reply
from .records import Recorder


class Controlled(Protocol):
    """What the control API drives: :class:`~sidecar.sim.server.Simulator`.

    Spelled out here so that this module does not import the server that
    imports it.
    """

    recorder: Recorder
    delay: float

    @property
    def requests(self) -> Sequence[dict[str, Any]]: ...
    @property
    def dead_tokens(self) -> set[str]: ...
    @property
    def bad_tokens(self) -> set[str]: ...
    @property
    def token_topics(self) -> dict[str, str]: ...
    @property
    def token_projects(self) -> dict[str, str]: ...

    def stats(self) -> Any: ...  # a dataclass: SimStats
    def reset(self) -> None: ...
    def script_status(self, sequence: Iterable[Any], *, kind: str = "apns") -> None: ...
    def goaway_after(self, n_streams: int, last_stream_id: int | None = None, *,
                     error_code: int = 0, debug_data: bytes = b"", repeat: bool = False,
                     kind: str | None = None) -> None: ...
    def drop_connection_after(self, n: int, *, repeat: bool = False,
                              kind: str | None = None, after_answer: bool = False) -> None: ...
    def expire_access_tokens(self) -> None: ...


def handle_admin(sim: Controlled, req: Incoming) -> Reply:
    """Answer one ``/_sim/`` request (never recorded)."""
    path, _, query = req.path.partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    try:
        if path == "/_sim/requests" and req.method == "GET":
            since = int(params.get("since", 0))
            kind = params.get("kind")
            records = [r for r in sim.requests
                       if r["seq"] > since and (kind is None or r["kind"] == kind)]
            return Reply.json(200, {"total": sim.recorder.total, "requests": records})
        if path == "/_sim/stats" and req.method == "GET":
            return Reply.json(200, dataclasses.asdict(sim.stats()))
        if path == "/_sim/reset" and req.method == "POST":
            sim.reset()
            return Reply.json(200, {"ok": True})
        if path == "/_sim/script" and req.method == "POST":
            apply_script(sim, req.document() if req.body else {})
            return Reply.json(200, {"ok": True})
    except (ValueError, TypeError, KeyError) as exc:
        return Reply.json(400, {"error": str(exc)})
    return Reply.json(404, {"error": f"no such control endpoint: {req.method} {path}"})


def apply_script(sim: Controlled, script: dict[str, Any]) -> None:
    """Apply a ``POST /_sim/script`` document.

    Raises:
        ValueError: unknown keys or malformed values.
    """
    if not isinstance(script, dict):
        raise ValueError("the script must be a JSON object")
    known = {"kind", "sequence", "dead_tokens", "bad_tokens", "token_topics", "token_projects",
             "delay", "goaway_after", "drop_connection_after", "expire_access_tokens"}
    unknown = set(script) - known
    if unknown:
        raise ValueError(f"unknown script keys: {sorted(unknown)}")
    if "sequence" in script:
        sim.script_status(script["sequence"], kind=script.get("kind", "apns"))
    sim.dead_tokens.update(script.get("dead_tokens", ()))
    sim.bad_tokens.update(script.get("bad_tokens", ()))
    sim.token_topics.update(script.get("token_topics", {}))
    sim.token_projects.update(script.get("token_projects", {}))
    if "delay" in script:
        sim.delay = float(script["delay"])
    goaway = script.get("goaway_after")
    if goaway is not None:
        goaway = {"n": goaway} if isinstance(goaway, int) else dict(goaway)
        if "debug_data" in goaway:
            goaway["debug_data"] = str(goaway["debug_data"]).encode()
        sim.goaway_after(goaway.pop("n"), **goaway)
    drop = script.get("drop_connection_after")
    if drop is not None:
        drop = {"n": drop} if isinstance(drop, int) else dict(drop)
        sim.drop_connection_after(drop.pop("n"), **drop)
    if script.get("expire_access_tokens"):
        sim.expire_access_tokens()
