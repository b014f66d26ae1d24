"""Prometheus metrics: names, values, isolation."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sidecar.model import OutcomeKind
from sidecar.observe.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_every_metric_is_rendered_with_its_name():
    m = Metrics(version="9.9")
    m.push_received("zmq")
    m.outcome("com.example.app", "apple", OutcomeKind.DELIVERED, 0.05)
    m.attempt("apple", 200, 0.02)
    m.attempt("firebase", 503, 0.02, retry=True)
    m.push_received("http")  # still in flight
    m.queue_added("remote_log")
    m.set_connections("apple:com.example.app", 1)
    m.advance_reconnects("apple:com.example.app", 1)
    m.advance_renewals("apple:com.example.app", "jwt", 1)
    m.advance_renewals("firebase:proj", "oauth", 1)
    m.store_operation("sqlite", "add")
    m.store_operation("sqlite", "remove", error=True)
    m.advance_zmq_rejected("undecodable", 1)
    m.config_reload(ok=False)
    m.remote_log("dropped")
    text = m.render()[0].decode()
    for name in [
        "pushsidecar_info", "pushsidecar_pushes_received_total", "pushsidecar_outcomes_total",
        "pushsidecar_push_seconds_bucket", "pushsidecar_send_seconds_bucket",
        "pushsidecar_send_attempts_total", "pushsidecar_retries_total",
        "pushsidecar_pushes_in_flight", "pushsidecar_queue_depth", "pushsidecar_connections_open",
        "pushsidecar_reconnects_total", "pushsidecar_credential_renewals_total",
        "pushsidecar_store_operations_total",
        "pushsidecar_store_errors_total", "pushsidecar_zmq_rejected_frames_total",
        "pushsidecar_config_reloads_total", "pushsidecar_remote_logs_total",
    ]:
        assert f"\n{name}{{" in text or f"\n{name} " in text, name
    assert value(m, "pushsidecar_info", version="9.9") == 1


def test_values_add_up():
    m = Metrics()
    for _ in range(3):
        m.push_received("http")
    m.push_received("zmq")
    m.outcome("app", "apple", OutcomeKind.DELIVERED, 0.2)
    m.outcome("app", "apple", "delivered", 0.4)
    m.outcome("app", "firebase", OutcomeKind.TOKEN_DEAD)
    m.attempt("apple", 0, 1.5, retry=True)
    m.attempt("apple", 200, 0.01)
    m.queue_added("q")
    m.queue_added("q")
    m.queue_taken("q")
    m.set_connections("s", 1)
    m.store_operation("sqlite", "lookup", error=True)
    m.config_reload(True)
    assert value(m, "pushsidecar_pushes_received_total", source="http") == 3
    assert value(m, "pushsidecar_outcomes_total", app="app", platform="apple", outcome="delivered") == 2
    assert value(m, "pushsidecar_outcomes_total", app="app", platform="firebase", outcome="token_dead") == 1
    assert value(m, "pushsidecar_push_seconds_count", platform="apple", outcome="delivered") == 2
    assert value(m, "pushsidecar_push_seconds_sum", platform="apple", outcome="delivered") == pytest.approx(0.6)
    # an outcome without a duration is counted but not observed
    assert value(m, "pushsidecar_push_seconds_count", platform="firebase", outcome="token_dead") is None
    assert value(m, "pushsidecar_send_attempts_total", platform="apple", status="0") == 1
    assert value(m, "pushsidecar_retries_total", platform="apple") == 1
    assert value(m, "pushsidecar_pushes_in_flight") == 1  # 4 received, 3 outcomes
    assert value(m, "pushsidecar_queue_depth", queue="q") == 1
    assert value(m, "pushsidecar_connections_open", service="s") == 1
    assert value(m, "pushsidecar_store_operations_total", backend="sqlite", operation="lookup") == 1
    assert value(m, "pushsidecar_store_errors_total", backend="sqlite", operation="lookup") == 1
    assert value(m, "pushsidecar_config_reloads_total", result="ok") == 1


def test_in_flight_is_pushes_received_without_an_outcome_yet():
    m = Metrics()
    m.push_received("zmq")
    m.push_received("http")
    assert value(m, "pushsidecar_pushes_in_flight") == 2
    m.outcome("a", "apple", OutcomeKind.EXPIRED)
    assert value(m, "pushsidecar_pushes_in_flight") == 1
    m.outcome("a", "apple", OutcomeKind.DELIVERED, 0.1)
    assert value(m, "pushsidecar_pushes_in_flight") == 0


def test_totals_copied_at_scrape_count_only_what_is_new():
    m = Metrics()
    totals = {"n": 3}
    m.add_refresh(lambda: m.advance_zmq_rejected("expired", totals["n"]))
    assert value(m, "pushsidecar_zmq_rejected_frames_total", reason="expired") == 3
    totals["n"] = 5
    assert value(m, "pushsidecar_zmq_rejected_frames_total", reason="expired") == 5
    totals["n"] = 2  # the source was replaced (a reload): counted anew
    assert value(m, "pushsidecar_zmq_rejected_frames_total", reason="expired") == 7


def test_registries_are_private():
    first, second = Metrics(), Metrics()  # would raise "Duplicated timeseries" if shared
    first.push_received("zmq")
    assert value(second, "pushsidecar_pushes_received_total", source="zmq") is None
    assert REGISTRY.get_sample_value("pushsidecar_pushes_received_total", {"source": "zmq"}) is None


def test_label_children_are_cached():
    m = Metrics()
    m.push_received("zmq")
    child = m._received.get("zmq")
    m.push_received("zmq")
    assert m._received.get("zmq") is child
    assert value(m, "pushsidecar_pushes_received_total", source="zmq") == 2


def test_label_values_come_only_from_configured_applications():
    from sidecar.model import OutcomeKind
    from sidecar.observe.metrics import Metrics

    metrics = Metrics()
    metrics.set_applications([("com.example.app", "apple")])
    metrics.outcome("com.example.app", "apple", OutcomeKind.DELIVERED, 0.1)
    before = len(metrics.render()[0])
    for i in range(2000):  # what rejected ZeroMQ messages with made-up app ids did
        metrics.outcome(f"app-{i}", f"platform-{i % 7}", OutcomeKind.REJECTED, 0.01)
        metrics.attempt(f"platform-{i}", 400, 0.01)
    body = metrics.render()[0].decode()
    assert len(body) < before + 4000
    assert 'pushsidecar_outcomes_total{app="unknown",outcome="rejected",platform="unknown"} 2000.0' in body
    assert 'app="com.example.app"' in body and "app-1" not in body
    metrics.outcome("app-3", "apple", OutcomeKind.REJECTED)
    text = metrics.render()[0].decode()
    assert 'pushsidecar_outcomes_total{app="unknown",outcome="rejected",platform="apple"} 1.0' in text
