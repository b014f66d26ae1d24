"""The simulator: one TLS port serving APNs, FCM, Google OAuth and ``/_sim/``.

Requests are routed by path (``/3/...`` APNs, ``/v1/...`` FCM, ``/token``
OAuth, ``/_sim/...`` control); anything else is answered as APNs answers an
unknown path.  For each request :meth:`Simulator.plan` decides the answer
(validation first, then a scripted fault if one is queued for that kind, then
the token's scripted fate or success) and records it; the connection drivers
in ``h2server``/``h1server`` carry the plan out on the wire.

Usage in a test::

    async with open_simulator(generate_credentials(tmp_path)) as sim:
        sim.dead_tokens.add("abcd1234")
        ...  # talk to https://127.0.0.1:{sim.port}, trust sim.credentials.ca_file
        assert sim.requests[-1]["status"] == 410
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import ssl
import time
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator, Callable, Iterable

import trio

from .admin import handle_admin
from .apns import ApnsService
from .apns_auth import ProviderTokenChecker
from .creds import SimCredentials
from .exchange import ConnectionInfo, GoAway, Incoming, Plan
from .faults import KINDS, ConnectionTrigger, DeviceTokens, FaultPlan
from .fcm import FcmService
from .h1server import serve_http1
from .h2server import H2ServerConnection
from .oauth import AccessTokens, OAuthService, parse_form
from .records import Recorder, RecordView
from .tls import client_certificate_topic, server_context

HANDSHAKE_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the simulator's counters."""

    connections_accepted: int
    connections_open: int
    tls_failures: int
    streams: int
    token_fetches: int
    refused_streams: int
    goaways_sent: int
    connections_dropped: int
    statuses: dict[int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class StreamLimits:
    """SETTINGS_MAX_CONCURRENT_STREAMS advertised (see :class:`Simulator`'s arguments)."""

    apns: int
    fcm: int
    initial: int


class Simulator:
    """APNs + FCM + OAuth on one port.

    Args:
        credentials: the set from :func:`~sidecar.sim.creds.generate_credentials`;
            its APNs key, CA and service account are trusted.
        host: address to listen on.
        port: port to listen on (0: any free port; see :attr:`port`).
        record_file: JSON-lines file every request is appended to.
        max_records: how many records :attr:`requests` keeps (0: none).
        apns_max_streams: SETTINGS_MAX_CONCURRENT_STREAMS after a first
            success on APNs (and from the start with certificate auth).
        fcm_max_streams: the same after a first FCM or OAuth success.
        initial_max_streams: advertised on connections without a client
            certificate until a request succeeds (Apple: 1).
        token_update_interval: minimum seconds between two different APNs
            provider tokens of one key (Apple: 20 minutes).
        provider_token_max_age: APNs provider tokens older than this are expired.
        access_token_lifetime: ``expires_in`` of OAuth access tokens.
        clock: wall-clock seconds (JWT ``iat``/``exp`` and token expiry).
    """

    def __init__(self, credentials: SimCredentials | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, record_file: str | Path | None = None,
                 max_records: int = 10_000, apns_max_streams: int = 1000,
                 fcm_max_streams: int = 100, initial_max_streams: int = 1,
                 token_update_interval: float = 1200.0, provider_token_max_age: float = 3600.0,
                 access_token_lifetime: float = 3599, clock: Callable[[], float] = time.time):
        self.credentials = credentials
        self.host = host
        self.port = port
        self.stream_limits = StreamLimits(apns_max_streams, fcm_max_streams, initial_max_streams)
        self.faults = FaultPlan()
        self.tokens = DeviceTokens()
        self.recorder = Recorder(record_file, max_records=max_records, clock=clock)
        self.provider_tokens = ProviderTokenChecker(
            max_age=provider_token_max_age, min_update_interval=token_update_interval, clock=clock)
        self.access_tokens = AccessTokens(clock)
        self._token_uris: set[str] = set()
        self.apns = ApnsService(self.tokens, self.provider_tokens, clock)
        self.fcm = FcmService(self.tokens, self.access_tokens)
        self.oauth = OAuthService(self.access_tokens, self._audiences,
                                  lifetime=access_token_lifetime, clock=clock)
        self._services = {"apns": self.apns, "fcm": self.fcm, "oauth": self.oauth}
        self._ssl_context: ssl.SSLContext | None = None
        self._connections: set[H2ServerConnection] = set()
        self._connection_ids = itertools.count(1)
        self.connections_open = 0
        self._reset_counters()
        if credentials is not None:
            self.add_apns_key(credentials.key_id, credentials.team_id,
                              credentials.apns_public_key_pem())
            self.add_service_account(credentials.service_account())

    # -- set-up ------------------------------------------------------------

    def add_apns_key(self, key_id: str, team_id: str, public_key_pem: bytes) -> None:
        """Accept APNs provider tokens signed by this key."""
        self.provider_tokens.add_key(key_id, team_id, public_key_pem)

    def add_service_account(self, info: dict[str, Any]) -> None:
        """Accept OAuth assertions from this service account (its JSON)."""
        self.oauth.add_service_account(info)
        if info.get("token_uri"):
            self._token_uris.add(info["token_uri"])

    # -- scripting -----------------------------------------------------------

    @property
    def requests(self) -> RecordView:
        """Recorded requests, oldest first (``/_sim/`` ones excluded)."""
        return self.recorder.records

    @property
    def dead_tokens(self) -> set[str]:
        """Tokens answered as gone (APNs 410 Unregistered, FCM 404 UNREGISTERED)."""
        return self.tokens.dead

    @property
    def bad_tokens(self) -> set[str]:
        """Tokens answered as invalid (APNs 400 BadDeviceToken, FCM 400 INVALID_ARGUMENT)."""
        return self.tokens.bad

    @property
    def token_topics(self) -> dict[str, str]:
        """APNs token -> its only topic (other topics: 400 DeviceTokenNotForTopic)."""
        return self.tokens.topics

    @property
    def token_projects(self) -> dict[str, str]:
        """FCM token -> its project (other projects: 403 SENDER_ID_MISMATCH)."""
        return self.tokens.projects

    @property
    def delay(self) -> float:
        """Seconds every answer waits (0: answer at once)."""
        return self.faults.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.faults.delay = seconds

    @property
    def token_fetches(self) -> int:
        """Access tokens issued by the OAuth endpoint."""
        return self.oauth.fetches

    def script_status(self, sequence: Iterable[Any], *, kind: str = "apns") -> None:
        """Queue canned answers for the next valid requests of ``kind``.

        Args:
            sequence: items like ``(503, {"retry-after": "1"})``,
                ``(410, {}, "Unregistered")``, a bare status or a
                :class:`~sidecar.sim.faults.Fault`; each answers one request.
            kind: ``apns``, ``fcm`` or ``oauth``.
        """
        self.faults.script(kind, sequence)

    def goaway_after(self, n_streams: int, last_stream_id: int | None = None, *,
                     error_code: int = 0, debug_data: bytes = b"", repeat: bool = False,
                     kind: str | None = None) -> None:
        """Send GOAWAY on the connection carrying the ``n_streams``-th next request.

        Streams up to ``last_stream_id`` (default: that request's stream) are
        answered, later ones never are, and the connection then closes.  With
        an explicit ``last_stream_id``, HTTP/2 streams above it are held
        unanswered from now on, so they are the unprocessed ones when the
        GOAWAY goes.  Over HTTP/1.1 the answer carries ``connection: close``.
        """
        self.faults.goaway = ConnectionTrigger(
            n_streams, repeat=repeat, last_stream_id=last_stream_id, error_code=error_code,
            debug_data=debug_data, kind=_check_kind(kind))

    def drop_connection_after(self, n: int, *, repeat: bool = False,
                              kind: str | None = None, after_answer: bool = False) -> None:
        """Close the connection abruptly when the request after the next ``n`` arrives.

        That request gets no answer; the ``n`` before it are answered.  With
        ``after_answer`` it is answered too, and the connection is cut (TCP
        RST) right after its answer left.
        """
        self.faults.drop = ConnectionTrigger(n + 1, repeat=repeat, kind=_check_kind(kind),
                                             after_answer=after_answer)

    def expire_access_tokens(self) -> None:
        """Make every OAuth access token issued so far expired."""
        self.access_tokens.expire_all()

    def reset(self) -> None:
        """Forget records, scripts, token fates, token history and counters."""
        self.recorder.clear()
        self.faults.clear()
        self.tokens.clear()
        self.provider_tokens.reset()
        self._reset_counters()

    async def wait_requests(self, count: int) -> None:
        """Wait until ``count`` requests have been recorded since start."""
        await self.recorder.wait_for(count)

    def stats(self) -> SimStats:
        open_h2 = self._connections
        return SimStats(
            connections_accepted=self.connections_accepted,
            connections_open=self.connections_open,
            tls_failures=self.tls_failures,
            streams=self.streams,
            token_fetches=self.oauth.fetches,
            refused_streams=self._refused_closed + sum(c.refused_streams for c in open_h2),
            goaways_sent=self._goaways_closed + sum(c.goaways_sent for c in open_h2),
            connections_dropped=self.connections_dropped,
            statuses=dict(self.statuses),
        )

    # -- serving -------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``nursery.start`` returns the port."""
        if self.credentials is None:
            raise RuntimeError("the simulator needs credentials (see sidecar.sim.creds)")
        creds = self.credentials
        self._ssl_context = server_context(creds.server_cert, creds.server_key, creds.ca_file)
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        try:
            task_status.started(self.port)
            await trio.serve_listeners(self._serve_connection, listeners)
        finally:
            self.recorder.close()

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _audiences(self) -> set[str]:
        return self._token_uris | {f"https://127.0.0.1:{self.port}/token",
                                   f"https://localhost:{self.port}/token"}

    async def _serve_connection(self, tcp: trio.SocketStream) -> None:
        self.connections_accepted += 1
        conn_id = next(self._connection_ids)
        # Not https_compatible: closing sends a close_notify, so clients that
        # insist on one (trio's default) see a clean end after a GOAWAY.
        stream = trio.SSLStream(tcp, self._ssl_context, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, trio.ClosedResourceError):
            self.tls_failures += 1
            await trio.aclose_forcefully(tcp)
            return
        topic = client_certificate_topic(stream.getpeercert())
        self.connections_open += 1
        try:
            if stream.selected_alpn_protocol() == "h2":
                info = ConnectionInfo(conn_id, "2", topic)
                first_limit = self.stream_limits.apns if topic else self.stream_limits.initial
                conn = H2ServerConnection(stream, info, self.plan, self.recorder.flush,
                                          max_streams=first_limit)
                self._connections.add(conn)
                try:
                    await conn.run()
                finally:
                    self._connections.discard(conn)
                    self._refused_closed += conn.refused_streams
                    self._goaways_closed += conn.goaways_sent
            else:
                info = ConnectionInfo(conn_id, "1.1", topic)
                await serve_http1(stream, info, self.plan, self.recorder.flush)
        finally:
            self.connections_open -= 1

    # -- deciding --------------------------------------------------------------

    def plan(self, req: Incoming) -> Plan:
        """Decide and record the answer to one request (no I/O)."""
        if req.path.startswith("/_sim/"):
            return Plan(handle_admin(self, req))
        self.streams += 1
        kind = _kind_of(req.path)
        faults = self.faults
        cut = False
        if faults.drop is not None and (fired := faults.take_drop(kind)) is not None:
            if not fired.after_answer:
                return self._dropped(kind, req)
            cut = True
        trigger = faults.take_goaway(kind) if faults.goaway is not None else None
        if req.conn.http_version == "2" and self._beyond_goaway(req, kind, trigger):
            # Promised unprocessed by a GOAWAY with an explicit last_stream_id.
            self.recorder.add(kind, req, None, outcome="refused")
            return Plan(None, goaway=self._goaway_frame(trigger, req) if trigger else None)
        service = self._services[kind]
        reply = service.validate(req)
        fault = None
        if reply is None:
            fault = faults.next_fault(kind) if faults.scripts[kind] else None
            if fault is None:
                reply = service.deliver(req) if kind != "oauth" else self.oauth.grant(req)
            elif fault.drop:
                return self._dropped(kind, req)
            elif fault.reset is None:
                reply = service.fault_reply(fault, req)
        plan = Plan(reply, delay=faults.delay + (fault.delay if fault else 0.0),
                    cut=cut or bool(fault is not None and fault.cut))
        if plan.cut:
            self.connections_dropped += 1
        if fault is not None and fault.reset is not None:
            plan.reset = fault.reset
            self.recorder.add(kind, req, None, outcome="reset",
                              form=parse_form(req.body) if kind == "oauth" else None)
            return plan
        assert reply is not None
        self.recorder.add(kind, req, reply, outcome="cut" if plan.cut else None,
                          form=parse_form(req.body) if kind == "oauth" else None)
        self.statuses[reply.status] += 1
        if trigger is not None:
            plan.goaway = self._goaway_frame(trigger, req)
        # Apple lifts its 1-stream limit on the first success; Google has no
        # such rule, so any answer from FCM/OAuth lifts it.
        if not req.conn.streams_raised and (reply.status == 200 or kind != "apns"):
            req.conn.streams_raised = True
            plan.raise_streams = self.stream_limits.apns if kind == "apns" else self.stream_limits.fcm
        return plan

    def _beyond_goaway(self, req: Incoming, kind: str, fired: ConnectionTrigger | None) -> bool:
        trigger = fired or self.faults.goaway
        if trigger is None or trigger.last_stream_id is None:
            return False
        if fired is None and trigger.kind not in (None, kind):
            return False
        return req.stream_id > trigger.last_stream_id

    @staticmethod
    def _goaway_frame(trigger: ConnectionTrigger, req: Incoming) -> GoAway:
        last = req.stream_id if trigger.last_stream_id is None else trigger.last_stream_id
        return GoAway(last, trigger.error_code, trigger.debug_data)

    def _dropped(self, kind: str, req: Incoming) -> Plan:
        self.connections_dropped += 1
        self.recorder.add(kind, req, None, outcome="dropped",
                          form=parse_form(req.body) if kind == "oauth" else None)
        return Plan(None, drop=True)

    def _reset_counters(self) -> None:
        self.connections_accepted = 0
        self.tls_failures = 0
        self.streams = 0
        self.connections_dropped = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self._refused_closed = 0
        self._goaways_closed = 0
        self.oauth.fetches = 0


def _kind_of(path: str) -> str:
    if path.startswith("/v1/"):
        return "fcm"
    if path == "/token" or path.startswith("/token?"):
        return "oauth"
    return "apns"


def _check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return kind


@contextlib.asynccontextmanager
async def open_simulator(credentials: SimCredentials, **options: Any) -> AsyncIterator[Simulator]:
    """Run a :class:`Simulator` for the duration of the block.

    Args:
        credentials: the credential set to serve with.
        **options: keyword arguments of :class:`Simulator`.
    """
    sim = Simulator(credentials, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()
