"""Metrics counted from the daemon's events: what each event moves, that a quieter log level counts the
same, and that /metrics serves them (a real HTTP server on a free port)."""

from __future__ import annotations

import io
import socket
import urllib.request

import pytest
import structlog

from evacuator.logs import configure_logging
from evacuator.metrics import EventMetrics, serve_metrics


def _value(metrics: EventMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def _emit(metrics: EventMetrics, event: str, **context: object) -> None:
    metrics(None, "info", {"event": event, **context})


@pytest.mark.parametrize(
    ("event", "context", "metric", "labels", "expected"),
    [
        pytest.param("incident_opened", {}, "evacuator_incidents_total", {}, 1, id="incident"),
        pytest.param("move_finished", {"seconds": 3.5, "bytes_copied": 1024}, "evacuator_moves_total",
                     {"outcome": "moved"}, 1, id="moved"),
        pytest.param("move_finished", {"seconds": 3.5, "bytes_copied": 1024}, "evacuator_copied_bytes_total",
                     {}, 1024, id="bytes"),
        pytest.param("move_finished", {"seconds": 3.5, "bytes_copied": 1024},
                     "evacuator_move_duration_seconds_sum", {}, 3.5, id="duration"),
        pytest.param("move_failed", {"error": "x"}, "evacuator_moves_total", {"outcome": "failed"}, 1,
                     id="failed"),
        pytest.param("move_unplaced", {"reason": "no_capacity"}, "evacuator_moves_total",
                     {"outcome": "unplaced"}, 1, id="unplaced"),
        pytest.param("move_step_finished", {"step": "copy_disks", "seconds": 2.0},
                     "evacuator_move_step_duration_seconds_count", {"step": "copy_disks"}, 1, id="step"),
        pytest.param("move_step_finished", {"step": "copy_disks", "seconds": None},
                     "evacuator_move_step_duration_seconds_count", {"step": "copy_disks"}, 0,
                     id="step-without-seconds"),
        pytest.param("notice_confirmed", {"notice_type": "vm_evacuated"}, "evacuator_notices_total",
                     {"notice_type": "vm_evacuated", "fate": "confirmed"}, 1, id="notice"),
        pytest.param("reply_refused", {"reason": "not_owner"}, "evacuator_replies_total",
                     {"outcome": "refused", "reason": "not_owner"}, 1, id="refused"),
        pytest.param("reply_rejected", {"reason": "free text " * 5}, "evacuator_replies_total",
                     {"outcome": "rejected", "reason": ""}, 1, id="rejected-reason-never-a-label"),
        pytest.param("broker_connected", {"role": "publisher"}, "evacuator_broker_connected",
                     {"role": "publisher"}, 1, id="broker-up"),
        pytest.param("source_failed", {"source": "ipmi"}, "evacuator_sensor_source_failures_total",
                     {"source": "ipmi"}, 1, id="source"),
        pytest.param("data_channel_sent", {}, "evacuator_data_channel_transfers_total",
                     {"direction": "sent"}, 1, id="sent"),
        pytest.param("some_other_event", {}, "evacuator_incidents_total", {}, 0, id="unknown-events-ignored"),
    ],
)  # fmt: skip
def test_each_event_moves_its_metric(
    event: str, context: dict[str, object], metric: str, labels: dict[str, str], expected: float
) -> None:
    metrics = EventMetrics()
    _emit(metrics, event, **context)
    assert _value(metrics, metric, **labels) == expected


def test_the_verdict_gauge_holds_only_the_current_severity() -> None:
    metrics = EventMetrics()
    assert _value(metrics, "evacuator_host_verdict", severity="unknown") == 1
    _emit(metrics, "host_verdict_changed", severity="severe")
    _emit(metrics, "host_verdict_changed", severity="healthy")
    assert {s: _value(metrics, "evacuator_host_verdict", severity=s)
            for s in ("healthy", "moderate", "severe", "failed", "unknown")} == {
        "healthy": 1, "moderate": 0, "severe": 0, "failed": 0, "unknown": 0}  # fmt: skip


def test_a_broken_connection_sets_its_role_down() -> None:
    metrics = EventMetrics()
    _emit(metrics, "broker_connected", role="replies")
    _emit(metrics, "broker_connection_lost", role="replies")
    assert _value(metrics, "evacuator_broker_connected", role="replies") == 0


def test_a_quieter_log_level_counts_the_same_and_still_writes_only_its_level() -> None:
    metrics = EventMetrics()
    out = io.StringIO()
    configure_logging("json", level="warning", stream=out, observers=[metrics])
    try:
        log = structlog.get_logger("test")
        log.info("incident_opened", host="hv-01")
        log.warning("move_failed", vm_uuid="x", error="y")
    finally:
        configure_logging("console", level="info")
    assert _value(metrics, "evacuator_incidents_total") == 1  # an info event, not written
    assert _value(metrics, "evacuator_moves_total", outcome="failed") == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and '"move_failed"' in lines[0]


def test_metrics_are_served_over_http_and_a_taken_port_is_no_failure() -> None:
    metrics = EventMetrics()
    _emit(metrics, "incident_opened")
    stop = serve_metrics(metrics, address="127.0.0.1", port=0)
    assert stop is not None
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            with structlog.testing.capture_logs() as logs:
                assert serve_metrics(metrics, address="127.0.0.1", port=busy.getsockname()[1]) is None
            assert [e["event"] for e in logs] == ["metrics_unavailable"]
    finally:
        stop()


def test_served_text_holds_the_counters() -> None:
    metrics = EventMetrics()
    _emit(metrics, "incident_opened")
    with structlog.testing.capture_logs() as logs:
        stop = serve_metrics(metrics, address="127.0.0.1", port=0)
    assert stop is not None
    try:
        port = next(e["port"] for e in logs if e["event"] == "metrics_listening")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        stop()
    assert "evacuator_incidents_total 1.0" in text
