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
        pytest.param("window_precopy_pass", {"number": 2, "sent_bytes": 5 << 20, "pass_bytes": 1 << 20},
                     "evacuator_precopy_passes_total", {}, 1, id="precopy-pass"),
        pytest.param("window_precopy_pass", {"number": 2, "sent_bytes": 5 << 20, "pass_bytes": 1 << 20},
                     "evacuator_precopy_bytes_total", {}, 1 << 20, id="precopy-bytes"),
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
        pytest.param("move_cost_measured", {"downtime_seconds": 4.25, "bytes_moved": 1024},
                     "evacuator_move_downtime_seconds_sum", {}, 4.25, id="downtime"),
        pytest.param("move_cost_measured", {"downtime_seconds": 4.25},
                     "evacuator_move_downtime_seconds_bucket", {"le": "5.0"}, 1, id="downtime-bucket"),
        pytest.param("move_cost_measured", {"downtime_seconds": None, "bytes_moved": None},
                     "evacuator_move_downtime_seconds_count", {}, 0, id="downtime-not-measured"),
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


@pytest.mark.parametrize(
    ("events", "metric", "labels", "expected"),
    [
        pytest.param([("notice_stored", {"event_id": "e1", "outbox_depth": 3})], "evacuator_outbox_notices",
                     {}, 3, id="depth-when-stored"),
        pytest.param([("notice_stored", {"event_id": "e1", "outbox_depth": 3}),
                      ("notice_delivered", {"event_id": "e1", "outbox_depth": 0})],
                     "evacuator_outbox_notices", {}, 0, id="depth-when-delivered"),
        pytest.param([("outbox_backlog_found", {"notice_count": 7})], "evacuator_outbox_notices", {}, 7,
                     id="backlog-of-an-earlier-run"),
        pytest.param([("move_step_started", {"vm_uuid": "a", "step": "copy_disks"}),
                      ("move_step_started", {"vm_uuid": "b", "step": "copy_disks"}),
                      ("move_step_started", {"vm_uuid": "c", "step": "quiesce"})],
                     "evacuator_transfers_in_flight", {"direction": "outgoing"}, 2, id="two-copying"),
        pytest.param([("move_step_started", {"vm_uuid": "a", "step": "copy_disks"}),
                      ("move_step_finished", {"vm_uuid": "a", "step": "copy_disks", "seconds": 1.0})],
                     "evacuator_transfers_in_flight", {"direction": "outgoing"}, 0, id="copied"),
        pytest.param([("move_step_started", {"vm_uuid": "a", "step": "copy_disks"}),
                      ("move_failed", {"vm_uuid": "a", "error": "x"})],
                     "evacuator_transfers_in_flight", {"direction": "outgoing"}, 0, id="failed-mid-copy"),
        pytest.param([("move_step_failed", {"vm_uuid": "a", "step": "copy_disks"})],
                     "evacuator_transfers_in_flight", {"direction": "outgoing"}, 0, id="end-without-start"),
        pytest.param([("volume_receive_started", {"pool": "p", "volume": "v1"}),
                      ("volume_receive_started", {"pool": "p", "volume": "v2"}),
                      ("volume_received", {"pool": "p", "volume": "v1"})],
                     "evacuator_transfers_in_flight", {"direction": "incoming"}, 1, id="receiving"),
        pytest.param([("volume_receive_started", {"pool": "p", "volume": "v1"}),
                      ("volume_receive_failed", {"pool": "p", "volume": "v1"})],
                     "evacuator_transfers_in_flight", {"direction": "incoming"}, 0, id="receive-failed"),
        pytest.param([("settings_reloaded", {"applied": []})], "evacuator_settings_reloads_total",
                     {"outcome": "applied"}, 1, id="reloaded"),
        pytest.param([("reload_refused", {"error": "x"})], "evacuator_settings_reloads_total",
                     {"outcome": "refused"}, 1, id="reload-refused"),
        pytest.param([("outbox_backlog_found", {})], "evacuator_outbox_notices", {}, 0,
                     id="malformed-event-skipped"),
    ],
)  # fmt: skip
def test_gauges_follow_what_is_in_flight(
    events: list[tuple[str, dict[str, object]]], metric: str, labels: dict[str, str], expected: float
) -> None:
    metrics = EventMetrics()
    for event, context in events:
        _emit(metrics, event, **context)
    assert _value(metrics, metric, **labels) == expected


def test_confirm_latency_runs_from_stored_to_delivered_for_this_runs_notices() -> None:
    now = [100.0]
    metrics = EventMetrics(clock=lambda: now[0])
    _emit(metrics, "notice_stored", event_id="e1", notice_type="evacuation_scheduled", outbox_depth=1)
    now[0] += 0.25
    _emit(metrics, "notice_delivered", event_id="e1", notice_type="evacuation_scheduled", outbox_depth=0)
    _emit(metrics, "notice_delivered", event_id="from-an-earlier-run", notice_type="evacuation_scheduled")
    labels = {"notice_type": "evacuation_scheduled"}
    assert _value(metrics, "evacuator_notice_confirm_seconds_count", **labels) == 1
    assert _value(metrics, "evacuator_notice_confirm_seconds_sum", **labels) == 0.25


def test_readings_are_replaced_whole_at_every_poll() -> None:
    metrics = EventMetrics()
    hot = {"source": "hwmon", "sensor": "coretemp/temp1", "celsius": 97.0, "threshold_celsius": 90.0}
    dimm = {"source": "edac", "location": "DIMM_A1", "kind": "corrected", "errors": 4, "threshold": 10}
    _emit(metrics, "sensor_readings", temperatures=[hot], memory_errors=[dimm])
    sensor = {"source": "hwmon", "sensor": "coretemp/temp1"}
    assert _value(metrics, "evacuator_temperature_celsius", **sensor) == 97
    assert _value(metrics, "evacuator_temperature_threshold_celsius", **sensor) == 90
    location = {"source": "edac", "location": "DIMM_A1", "kind": "corrected"}
    assert _value(metrics, "evacuator_memory_errors", **location) == 4
    assert _value(metrics, "evacuator_memory_errors_threshold", kind="corrected") == 10
    _emit(metrics, "sensor_readings", temperatures=[], memory_errors=[])
    assert metrics.registry.get_sample_value("evacuator_temperature_celsius", sensor) is None
