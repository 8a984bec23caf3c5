"""Prometheus metrics, counted from the daemon's own events (issue 21).

Every event the daemon logs has a fixed snake_case name and its context as keywords (STYLE), so the events
already say what happened: a structlog processor (`EventMetrics`, installed before the level filter so a
quieter log level counts the same) turns the ones below into metrics, and nothing else in the code base
needs to know that metrics exist. Names follow node_exporter's style: the `evacuator_` prefix, base units,
`_total` counters. docs/operations.md lists them; config/prometheus-alerts.yaml alerts on them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger(__name__)

SEVERITIES = ("healthy", "moderate", "severe", "failed", "unknown")
# From a few seconds (a small disk on a fast link) to an hour (a large one across a busy cloud).
_MOVE_BUCKETS_SECONDS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_STEP_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# A guest's downtime: a boot after a pre-copied move takes seconds; a full copy after the shutdown, an hour.
_DOWNTIME_BUCKETS_SECONDS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# From a broker's usual confirm (milliseconds) to an outage that holds notices in the outbox for an hour.
_CONFIRM_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300, 3600)
# Notices stored and not yet confirmed whose store time is kept for the latency: a bound, so a broker that
# never returns cannot grow the daemon's memory without end (the outbox itself keeps every notice).
_MAX_UNCONFIRMED = 10_000
# The move step that copies a VM's disks: while it runs, the VM's transfer is in flight.
_COPY_STEP = "copy_disks"


class EventMetrics:
    """The registry of the daemon's metrics, and the structlog processor that feeds it."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        r = self.registry
        self.verdict = Gauge("evacuator_host_verdict", "1 for the host's current verdict, 0 for the others",
                             ["severity"], registry=r)  # fmt: skip
        for severity in SEVERITIES:
            self.verdict.labels(severity).set(1 if severity == "unknown" else 0)
        self.incidents = Counter("evacuator_incidents_total", "Incidents opened (a sick spell with moves)",
                                 registry=r)  # fmt: skip
        self.moves = Counter("evacuator_moves_total", "Moves ended, by outcome (moved, failed, unplaced)",
                             ["outcome"], registry=r)  # fmt: skip
        self.rollbacks = Counter("evacuator_move_rollbacks_total", "Moves rolled back, by where the VM ended",
                                 ["outcome"], registry=r)  # fmt: skip
        self.move_seconds = Histogram("evacuator_move_duration_seconds", "Duration of each successful move",
                                      buckets=_MOVE_BUCKETS_SECONDS, registry=r)  # fmt: skip
        self.downtime_seconds = Histogram(
            "evacuator_move_downtime_seconds", "Each moved VM's downtime, guest off to running on the "
            "destination (cold moves of running VMs: what vm_evacuated tells the tenant)",
            buckets=_DOWNTIME_BUCKETS_SECONDS, registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram("evacuator_move_step_duration_seconds", "Duration of each move step",
                                      ["step"], buckets=_STEP_BUCKETS_SECONDS, registry=r)  # fmt: skip
        self.copied = Counter("evacuator_copied_bytes_total", "Disk bytes copied by successful moves",
                              registry=r)  # fmt: skip
        fates = "stored, confirmed, nacked, unroutable, failed"
        self.notices = Counter("evacuator_notices_total", f"Tenant notices by type and fate ({fates})",
                               ["notice_type", "fate"], registry=r)  # fmt: skip
        self.replies = Counter("evacuator_replies_total", "Tenant replies, by outcome (received, refused, "
                               "rejected) and reason", ["outcome", "reason"], registry=r)  # fmt: skip
        self.broker = Gauge("evacuator_broker_connected", "1 while a connection of this role is up",
                            ["role"], registry=r)  # fmt: skip
        self.polls_failed = Counter("evacuator_poll_failures_total", "Sensor polls that failed", registry=r)
        self.sources_failed = Counter("evacuator_sensor_source_failures_total",
                                      "Sensor source reads that failed", ["source"], registry=r)  # fmt: skip
        self.transfers = Counter("evacuator_data_channel_transfers_total",
                                 "Volumes sent and received over the data channel", ["direction"],
                                 registry=r)  # fmt: skip
        self.outbox = Gauge("evacuator_outbox_notices", "Tenant notices stored and not yet confirmed by the "
                            "broker", registry=r)  # fmt: skip
        self.confirm_seconds = Histogram("evacuator_notice_confirm_seconds", "From a notice stored in the "
                                         "outbox to the broker's confirm", ["notice_type"],
                                         buckets=_CONFIRM_BUCKETS_SECONDS, registry=r)  # fmt: skip
        self.in_flight = Gauge(
            "evacuator_transfers_in_flight",
            "Disk transfers under way: outgoing (VMs whose disks are being copied away), incoming (volumes "
            "being received over the data channel)",
            ["direction"],
            registry=r,
        )
        sensor = ["source", "sensor"]
        self.celsius = Gauge("evacuator_temperature_celsius", "Each sensor's last reading", sensor,
                             registry=r)  # fmt: skip
        self.threshold_celsius = Gauge(
            "evacuator_temperature_threshold_celsius", "The temperature each sensor is judged by", sensor,
            registry=r,
        )  # fmt: skip
        self.memory_errors = Gauge(
            "evacuator_memory_errors", "Memory errors within the rate window, per location and kind",
            ["source", "location", "kind"], registry=r,
        )  # fmt: skip
        self.memory_threshold = Gauge(
            "evacuator_memory_errors_threshold", "Errors within the window that make the host sick, per kind",
            ["kind"], registry=r,
        )  # fmt: skip
        self.reloads = Counter("evacuator_settings_reloads_total", "Settings reloads (SIGHUP), by outcome "
                               "(applied, refused)", ["outcome"], registry=r)  # fmt: skip
        self.precopy_passes = Counter("evacuator_precopy_passes_total", "Passes of the windows' pre-copies "
                                      "over a running VM's disks", registry=r)  # fmt: skip
        self.precopy_bytes = Counter("evacuator_precopy_bytes_total", "Bytes the windows' pre-copy passes "
                                     "wrote to destinations while their VMs ran", registry=r)  # fmt: skip
        # What is in flight, by key: notices by event id (with their store time), transfers by direction.
        self._stored_at: dict[str, float] = {}
        self._flying: dict[str, set[tuple[str, ...]]] = {"outgoing": set(), "incoming": set()}
        for direction in self._flying:
            self.in_flight.labels(direction).set(0)
        self._on: dict[str, Callable[[MutableMapping[str, Any]], None]] = {
            "host_verdict_changed": self._verdict,
            "incident_opened": lambda e: self.incidents.inc(),
            "move_finished": self._move_finished,
            "move_failed": lambda e: self._move_ended(e, "failed"),
            "move_unplaced": lambda e: self._move_ended(e, "unplaced"),
            "move_rolled_back": lambda e: self.rollbacks.labels(str(e.get("outcome", ""))).inc(),
            "move_step_finished": self._step,
            "move_cost_measured": self._downtime,
            "notice_stored": lambda e: self._notice(e, "stored"),
            "notice_confirmed": lambda e: self._notice(e, "confirmed"),
            "notice_nacked": lambda e: self._notice(e, "nacked"),
            "notice_unroutable": lambda e: self._notice(e, "unroutable"),
            "notice_failed": lambda e: self._notice(e, "failed"),
            "reply_received": lambda e: self.replies.labels("received", "").inc(),
            "reply_refused": lambda e: self.replies.labels("refused", str(e.get("reason", ""))).inc(),
            # Rejected before parsing: its reason is free text, which must not become a label's values.
            "reply_rejected": lambda e: self.replies.labels("rejected", "").inc(),
            "broker_connected": lambda e: self.broker.labels(str(e.get("role", ""))).set(1),
            "broker_connection_lost": lambda e: self.broker.labels(str(e.get("role", ""))).set(0),
            "poll_failed": lambda e: self.polls_failed.inc(),
            "source_failed": lambda e: self.sources_failed.labels(str(e.get("source", ""))).inc(),
            "data_channel_sent": lambda e: self.transfers.labels("sent").inc(),
            "volume_received": self._volume_received,
            "notice_delivered": self._notice_delivered,
            "outbox_backlog_found": lambda e: self.outbox.set(int(e["notice_count"])),
            "move_step_started": lambda e: self._copying(e, started=True),
            "move_step_skipped": lambda e: self._copying(e, started=False),
            "move_step_failed": lambda e: self._copying(e, started=False),
            "volume_receive_started": lambda e: self._receiving(e, started=True),
            "volume_receive_failed": lambda e: self._receiving(e, started=False),
            "sensor_readings": self._readings,
            "settings_reloaded": lambda e: self.reloads.labels("applied").inc(),
            "reload_refused": lambda e: self.reloads.labels("refused").inc(),
            "window_precopy_pass": self._precopy_pass,
        }

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor: counts the event, passes it on unchanged. A metric must never cost a log line,
        so a malformed event is skipped rather than raised."""
        handler = self._on.get(str(event.get("event", "")))
        if handler is not None:
            with contextlib.suppress(TypeError, ValueError, KeyError):
                handler(event)
        return event

    def _verdict(self, event: MutableMapping[str, Any]) -> None:
        current = str(event.get("severity", "unknown"))
        for severity in SEVERITIES:
            self.verdict.labels(severity).set(1 if severity == current else 0)

    def _move_finished(self, event: MutableMapping[str, Any]) -> None:
        self._move_ended(event, "moved")
        if isinstance(event.get("seconds"), (int, float)):
            self.move_seconds.observe(float(event["seconds"]))
        if isinstance(event.get("bytes_copied"), int):
            self.copied.inc(event["bytes_copied"])

    def _downtime(self, event: MutableMapping[str, Any]) -> None:
        """None (a VM that was off, a live move) is no observation: a zero would flatter the service level."""
        downtime = event.get("downtime_seconds")
        if isinstance(downtime, (int, float)) and not isinstance(downtime, bool):
            self.downtime_seconds.observe(float(downtime))

    def _precopy_pass(self, event: MutableMapping[str, Any]) -> None:
        self.precopy_passes.inc()
        if isinstance(event.get("pass_bytes"), int) and event["pass_bytes"] > 0:
            self.precopy_bytes.inc(event["pass_bytes"])

    def _step(self, event: MutableMapping[str, Any]) -> None:
        self._copying(event, started=False)
        if isinstance(event.get("seconds"), (int, float)):
            self.step_seconds.labels(str(event.get("step", ""))).observe(float(event["seconds"]))

    def _notice(self, event: MutableMapping[str, Any], fate: str) -> None:
        self.notices.labels(str(event.get("notice_type", "")), fate).inc()
        if fate == "stored":
            self._outbox_depth(event)
            if len(self._stored_at) < _MAX_UNCONFIRMED:
                self._stored_at[str(event.get("event_id"))] = self._clock()

    def _notice_delivered(self, event: MutableMapping[str, Any]) -> None:
        """The outbox's own confirm: stored by this run, its latency; stored by an earlier one, unknown."""
        self._outbox_depth(event)
        stored_at = self._stored_at.pop(str(event.get("event_id")), None)
        if stored_at is not None:
            latency = max(0.0, self._clock() - stored_at)
            self.confirm_seconds.labels(str(event.get("notice_type", ""))).observe(latency)

    def _outbox_depth(self, event: MutableMapping[str, Any]) -> None:
        if isinstance(event.get("outbox_depth"), int):
            self.outbox.set(event["outbox_depth"])

    def _copying(self, event: MutableMapping[str, Any], *, started: bool) -> None:
        if event.get("step") == _COPY_STEP:
            self._fly("outgoing", (str(event.get("vm_uuid")),), started=started)

    def _move_ended(self, event: MutableMapping[str, Any], outcome: str) -> None:
        """Counted; and a move that ended lands its transfer, whatever step it ended in."""
        self.moves.labels(outcome).inc()
        self._fly("outgoing", (str(event.get("vm_uuid")),), started=False)

    def _receiving(self, event: MutableMapping[str, Any], *, started: bool) -> None:
        self._fly("incoming", (str(event.get("pool")), str(event.get("volume"))), started=started)

    def _volume_received(self, event: MutableMapping[str, Any]) -> None:
        self.transfers.labels("received").inc()
        self._receiving(event, started=False)

    def _fly(self, direction: str, key: tuple[str, ...], *, started: bool) -> None:
        """Keyed, not counted: an end whose start was never seen (a failure before the transfer began)
        must not take the gauge below what is really in flight."""
        flying = self._flying[direction]
        if started:
            flying.add(key)
        else:
            flying.discard(key)
        self.in_flight.labels(direction).set(len(flying))

    def _readings(self, event: MutableMapping[str, Any]) -> None:
        """Replaced whole at every poll: a sensor that went away leaves the gauges with it."""
        self.celsius.clear()
        self.threshold_celsius.clear()
        for reading in event.get("temperatures", ()):
            labels = (str(reading["source"]), str(reading["sensor"]))
            self.celsius.labels(*labels).set(float(reading["celsius"]))
            self.threshold_celsius.labels(*labels).set(float(reading["threshold_celsius"]))
        self.memory_errors.clear()
        for location in event.get("memory_errors", ()):
            kind = str(location["kind"])
            self.memory_errors.labels(str(location["source"]), str(location["location"]), kind).set(
                float(location["errors"]))  # fmt: skip
            self.memory_threshold.labels(kind).set(float(location["threshold"]))


def serve_metrics(metrics: EventMetrics, *, address: str, port: int) -> Callable[[], None] | None:
    """Serves /metrics on address:port (0: any free port, logged); returns how to stop it. A port that cannot
    be bound is logged and the daemon goes on without metrics: they must never keep VMs from moving."""
    try:
        server, thread = start_http_server(port, addr=address, registry=metrics.registry)
    except OSError as exc:
        log.error("metrics_unavailable", address=address, port=port, error=str(exc))
        return None
    log.info("metrics_listening", address=address, port=server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
