"""What the simulator saw: one JSON-able dict per request.

Secrets never reach a record: the ``authorization`` value is replaced by
``<scheme> <redacted>`` and an OAuth ``assertion`` by ``<redacted>``, but the
decoded (unverified) JWT header and claims are kept, since that is what
tests assert on.  Records live in a bounded in-memory deque and, optionally,
in a JSON-lines file written once per batch of requests rather than per
request (the benchmark pushes thousands per second through here).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import jwt
import trio

from .exchange import Incoming, Reply

REDACTED = "<redacted>"
_JWT_CACHE_LIMIT = 1000


class _Entry:
    """A request as received; turned into a record dict only when looked at."""

    __slots__ = ("seq", "time", "kind", "req", "reply", "outcome", "form", "record")

    def __init__(self, seq: int, at: float, kind: str, req: Incoming, reply: Reply | None,
                 outcome: str | None, form: dict[str, str] | None) -> None:
        self.seq, self.time, self.kind, self.req = seq, at, kind, req
        self.reply, self.outcome, self.form = reply, outcome, form
        self.record: dict[str, Any] | None = None


class RecordView(Sequence[dict[str, Any]]):
    """The kept records, oldest first, built on access (cheap to hand out)."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def __len__(self) -> int:
        return len(self._recorder._entries)

    def __getitem__(self, index):  # type: ignore[override]
        entries = self._recorder._entries
        if isinstance(index, slice):
            return [self._recorder._materialize(e) for e in list(entries)[index]]
        return self._recorder._materialize(entries[index])

    def __repr__(self) -> str:
        return f"RecordView({list(self)!r})"


class Recorder:
    """Keeps records in memory (at most ``max_records``) and in ``path``.

    Recording costs little per request: the request is kept as received and
    turned into a dict only when read (``records``) or written (``flush``).

    Args:
        path: JSON-lines file to append to, or None.
        max_records: older records are forgotten beyond this many (0: keep none).
        clock: wall-clock seconds for the ``time`` field.
    """

    def __init__(self, path: str | Path | None = None, *, max_records: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self._entries: collections.deque[_Entry] = collections.deque(maxlen=max_records)
        self.records = RecordView(self)
        self.total = 0
        self._path = Path(path) if path else None
        self._file: Any = None
        self._pending: list[_Entry] = []
        self._clock = clock
        self._jwt_cache: dict[str, dict[str, Any] | None] = {}
        self._waiters: list[tuple[int, trio.Event]] = []

    def add(self, kind: str, req: Incoming, reply: Reply | None, *, outcome: str | None = None,
            form: dict[str, str] | None = None) -> None:
        """Record one request and what it was answered."""
        self.total += 1
        if self._entries.maxlen or self._path is not None:
            entry = _Entry(self.total, self._clock(), kind, req, reply, outcome, form)
            if self._entries.maxlen:
                self._entries.append(entry)
            if self._path is not None:
                self._pending.append(entry)
        if self._waiters:
            self._wake()

    def _materialize(self, entry: _Entry) -> dict[str, Any]:
        if entry.record is None:
            entry.record = self._build(entry)
        return entry.record

    def _build(self, entry: _Entry) -> dict[str, Any]:
        req, reply, form = entry.req, entry.reply, entry.form
        headers: dict[str, str] = {}
        jwt_info = None
        for name, value in req.headers:
            if name == "authorization":
                scheme, _, credential = value.partition(" ")
                value = f"{scheme} {REDACTED}"
                jwt_info = self._decode_jwt(credential)
            headers[name] = value
        record: dict[str, Any] = {
            "seq": entry.seq,
            "time": entry.time,
            "kind": entry.kind,
            "connection": req.conn.id,
            "stream": req.stream_id,
            "http": req.conn.http_version,
            "method": req.method,
            "path": req.path,
            "headers": headers,
            "status": reply.status if reply is not None else None,
            "reason": reply.reason if reply is not None else None,
        }
        if entry.outcome:
            record["outcome"] = entry.outcome
        if req.conn.client_topic is not None:
            record["client_certificate_topic"] = req.conn.client_topic
        if req.duplicate_headers:
            record["duplicate_headers"] = True
        if form is not None:
            assertion = form.get("assertion")
            if assertion:
                jwt_info = self._decode_jwt(assertion)
                form = dict(form, assertion=REDACTED)
            record["form"] = form
        elif req.body:
            try:
                record["body"] = req.document()
            except ValueError:
                record["body_text"] = req.body.decode("utf-8", "replace")
        if jwt_info is not None:
            record["jwt"] = jwt_info
        if reply is not None and reply.status == 200 and entry.kind == "apns":
            record["apns_id"] = dict(reply.headers).get("apns-id")
        return record

    async def wait_for(self, count: int) -> None:
        """Wait until at least ``count`` requests have been recorded in total."""
        if self.total >= count:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        self._waiters.append((count, event))
        await event.wait()

    def flush(self) -> None:
        """Append pending records to the file (called once per batch)."""
        if not self._pending or self._path is None:
            return
        if self._file is None:
            self._file = self._path.open("a", encoding="utf-8")
        lines = [json.dumps(self._materialize(e), separators=(",", ":")) for e in self._pending]
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def clear(self) -> None:
        """Forget the in-memory records (the file keeps its lines)."""
        self.flush()
        self._entries.clear()

    def _wake(self) -> None:
        still = []
        for count, event in self._waiters:
            if self.total >= count:
                event.set()
            else:
                still.append((count, event))
        self._waiters = still

    def _decode_jwt(self, token: str) -> dict[str, Any] | None:
        if token in self._jwt_cache:
            return self._jwt_cache[token]
        try:
            info = {"header": jwt.get_unverified_header(token),
                    "claims": jwt.decode(token, options={"verify_signature": False})}
        except jwt.PyJWTError:
            info = None
        if len(self._jwt_cache) >= _JWT_CACHE_LIMIT:
            self._jwt_cache.clear()
        self._jwt_cache[token] = info
        return info
