"""Prometheus metrics for ``GET /metrics``.

Theory of operation: one :class:`Metrics` object per daemon owns its own
``CollectorRegistry`` (never the global one, so tests and several daemons
in one process stay apart) and offers one method per thing worth counting.
The rest of the code calls those methods and never touches
prometheus_client.  Methods on the push path look up pre-bound label
children in a dict (one dict lookup and one lock-free-ish increment),
instead of calling ``.labels()`` every time.

"Nothing lost" is checkable from outside:
``sum(pushsidecar_pushes_received_total) == sum(pushsidecar_outcomes_total)``
once ``pushsidecar_pushes_in_flight`` is 0.

Label values are bounded: ingress names, configured applications, outcome
kinds, push service names, store operations.  Never label by token,
call-id or account.  The app and platform of a push come from its sender,
so they are used as labels only when they name a configured application
(:meth:`Metrics.set_applications`, called at start-up and on each reload);
anything else is counted as ``unknown``.
"""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Callable, Hashable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..model import OutcomeKind

NAMESPACE = "pushsidecar"
#: the label value of anything not configured (bounded cardinality)
UNKNOWN = "unknown"

# Push services answer in tens of milliseconds; a push may wait up to its
# deadline (about 45 s) when retried.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Children:
    """Label children of one metric, bound on first use and then cached."""

    __slots__ = ("_metric", "_cache")

    def __init__(self, metric: Any):
        self._metric = metric
        self._cache: dict[Hashable, Any] = {}

    def get(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


class Metrics:
    """All of the daemon's metrics, in a private registry.

    Args:
      registry: where to register (default: a new one).
      version: reported by ``pushsidecar_info``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, version: str = ""):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        n = NAMESPACE

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, labels, namespace=n, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Gauge(name, doc, labels, namespace=n, registry=r)

        info = gauge("info", "Constant 1, labelled with the version.", ("version",))
        info.labels(version or _package_version()).set(1)

        # -- pushes
        self._received = _Children(counter(
            "pushes_received", "Pushes received, per ingress (http, v2, zmq...).", ("source",)))
        self._outcomes = _Children(counter(
            "outcomes", "Final outcomes of pushes, one per push.", ("app", "platform", "outcome")))
        self._push_seconds = _Children(Histogram(
            "push_seconds", "Time from a push's arrival to its outcome.", ("platform", "outcome"),
            namespace=n, registry=r, buckets=PUSH_BUCKETS))
        self._send_seconds = _Children(Histogram(
            "send_seconds", "Duration of one attempt at a push service.", ("platform",),
            namespace=n, registry=r, buckets=SEND_BUCKETS))
        self._attempts = _Children(counter(
            "send_attempts", "Attempts at push services, per HTTP status (0: no answer).",
            ("platform", "status")))
        self._retries = _Children(counter(
            "retries", "Attempts that were retries of an earlier failed one.", ("platform",)))
        self._resent_unknown = _Children(counter(
            "resent_unknown", "Pushes resent once because a cut connection left their fate "
            "unknown (each may be a duplicate).", ("platform",)))
        self._in_flight = gauge("pushes_in_flight", "Pushes received and not yet finished.")
        self._queue_depth = _Children(gauge(
            "queue_depth", "Items waiting in an internal queue.", ("queue",)))

        # -- push service connections and credentials
        self._connections = _Children(gauge(
            "connections_open", "Open HTTP/2 connections per push service.", ("service",)))
        self._reconnects = _Children(counter(
            "reconnects", "Connections re-established after a failure or GOAWAY.", ("service",)))
        self._renewals = _Children(counter(
            "credential_renewals", "Provider JWTs signed and OAuth2 tokens fetched.",
            ("service", "kind")))

        # -- store, ingress, config, remote logging
        self._store_ops = _Children(counter(
            "store_operations", "Token store operations.", ("backend", "operation")))
        self._store_errors = _Children(counter(
            "store_errors", "Token store operations that failed.", ("backend", "operation")))
        self._zmq_rejected = _Children(counter(
            "zmq_rejected_frames", "ZeroMQ messages rejected (undecodable, invalid, too old).",
            ("reason",)))
        self._reloads = _Children(counter(
            "config_reloads", "Configuration reloads, by result (ok, failed).", ("result",)))
        self._remote_logs = _Children(counter(
            "remote_logs", "Remote log posts, by result (sent, failed, dropped).", ("result",)))

        self._applications: frozenset[tuple[str, str]] | None = None  # None: not restricted
        self._platforms: frozenset[str] = frozenset()
        # Called at each scrape, before rendering: they bring counters kept
        # elsewhere (connections, token renewals, ZeroMQ rejects) up to date.
        self._refreshers: list[Callable[[], None]] = []
        self._totals_seen: dict[Hashable, float] = {}

    # -- pushes ------------------------------------------------------------------

    def set_applications(self, applications: Iterable[tuple[str, str]]) -> None:
        """The configured (app-id, platform) pairs: the only app and platform label values."""
        self._applications = frozenset(applications)
        self._platforms = frozenset(platform for _, platform in self._applications)

    def _app_labels(self, app_id: str, platform: str) -> tuple[str, str]:
        known = self._applications
        if known is None or (app_id, platform) in known:
            return app_id, platform
        return UNKNOWN, platform if platform in self._platforms else UNKNOWN

    def _platform_label(self, platform: str) -> str:
        if self._applications is None or platform in self._platforms:
            return platform
        return UNKNOWN

    def push_received(self, source: str) -> None:
        """A push arrived: counted, and in flight until its :meth:`outcome`."""
        self._received.get(source).inc()
        self._in_flight.inc()

    def outcome(self, app_id: str, platform: str, kind: OutcomeKind | str, seconds: float | None = None) -> None:
        """Count one final outcome; ``seconds`` since the push arrived, if known."""
        kind_value = kind.value if isinstance(kind, OutcomeKind) else kind
        app_id, platform = self._app_labels(app_id, platform)
        self._outcomes.get(app_id, platform, kind_value).inc()
        self._in_flight.dec()
        if seconds is not None:
            self._push_seconds.get(platform, kind_value).observe(seconds)

    def attempt(self, platform: str, status: int, seconds: float, *, retry: bool = False) -> None:
        """One attempt at a push service: its answer's status (0: none) and duration."""
        platform = self._platform_label(platform)
        self._attempts.get(platform, str(status)).inc()
        self._send_seconds.get(platform).observe(seconds)
        if retry:
            self._retries.get(platform).inc()

    def resent_unknown(self, platform: str) -> None:
        self._resent_unknown.get(self._platform_label(platform)).inc()

    def queue_added(self, queue: str) -> None:
        """One item more waits in ``queue``."""
        self._queue_depth.get(queue).inc()

    def queue_taken(self, queue: str) -> None:
        """One item less waits in ``queue``."""
        self._queue_depth.get(queue).dec()

    # -- connections and credentials ---------------------------------------------

    def set_connections(self, service: str, count: int) -> None:
        self._connections.get(service).set(count)

    # -- store, ingress, config, remote logging ------------------------------------

    def store_operation(self, backend: str, operation: str, *, error: bool = False) -> None:
        self._store_ops.get(backend, operation).inc()
        if error:
            self._store_errors.get(backend, operation).inc()

    def config_reload(self, ok: bool) -> None:
        self._reloads.get("ok" if ok else "failed").inc()

    def remote_log(self, result: str) -> None:
        """``result``: ``sent``, ``failed`` or ``dropped``."""
        self._remote_logs.get(result).inc()

    # -- exposition ----------------------------------------------------------------

    def add_refresh(self, function: Callable[[], None]) -> None:
        """Call ``function`` before every scrape (to copy snapshots in)."""
        self._refreshers.append(function)

    def advance_reconnects(self, service: str, total: int) -> None:
        """Bring the reconnect counter of ``service`` up to a cumulative ``total``."""
        self._advance(self._reconnects, (service,), total)

    def advance_renewals(self, service: str, kind: str, total: int) -> None:
        """Bring JWT (``kind`` jwt) or OAuth (oauth) renewals up to ``total``."""
        self._advance(self._renewals, (service, kind), total)

    def advance_zmq_rejected(self, reason: str, total: int) -> None:
        self._advance(self._zmq_rejected, (reason,), total)

    def _advance(self, children: _Children, labels: tuple[str, ...], total: float) -> None:
        key = (id(children), labels)
        seen = self._totals_seen.get(key, 0)
        # A smaller total: its source was replaced (a reload); count it anew.
        delta = total - seen if total >= seen else total
        if delta:
            children.get(*labels).inc(delta)
        self._totals_seen[key] = total

    def render(self) -> tuple[bytes, str]:
        """The body and content type for ``GET /metrics``."""
        for refresh in self._refreshers:
            try:
                refresh()
            except Exception:  # a broken snapshot must not break the scrape
                logging.getLogger("sidecar.metrics").exception("metrics refresh failed")
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _package_version() -> str:
    from .. import __version__

    return __version__
