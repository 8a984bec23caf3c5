"""Prometheus metrics, counted from the daemon's own events (issue 21).

Every event the daemon logs has a fixed snake_case name and its context as keywords (STYLE), so the events
already say what happened: a structlog processor (`EventMetrics`, installed before the level filter so a
quieter log level counts the same) turns the ones below into metrics, and nothing else in the code base
needs to know that metrics exist. Names follow node_exporter's style: the `evacuator_` prefix, base units,
`_total` counters. docs/operations.md lists them; config/prometheus-alerts.yaml alerts on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger(__name__)

SEVERITIES = ("healthy", "moderate", "severe", "failed", "unknown")
# From a few seconds (a small disk on a fast link) to an hour (a large one across a busy cloud).
_MOVE_BUCKETS_SECONDS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_STEP_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class EventMetrics:
    """The registry of the daemon's metrics, and the structlog processor that feeds it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
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
        self._on: dict[str, Callable[[MutableMapping[str, Any]], None]] = {
            "host_verdict_changed": self._verdict,
            "incident_opened": lambda e: self.incidents.inc(),
            "move_finished": self._move_finished,
            "move_failed": lambda e: self.moves.labels("failed").inc(),
            "move_unplaced": lambda e: self.moves.labels("unplaced").inc(),
            "move_rolled_back": lambda e: self.rollbacks.labels(str(e.get("outcome", ""))).inc(),
            "move_step_finished": self._step,
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
            "volume_received": lambda e: self.transfers.labels("received").inc(),
        }

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor: counts the event, passes it on unchanged. A metric must never cost a log line,
        so a malformed event is skipped rather than raised."""
        handler = self._on.get(str(event.get("event", "")))
        if handler is not None:
            with contextlib.suppress(TypeError, ValueError):
                handler(event)
        return event

    def _verdict(self, event: MutableMapping[str, Any]) -> None:
        current = str(event.get("severity", "unknown"))
        for severity in SEVERITIES:
            self.verdict.labels(severity).set(1 if severity == current else 0)

    def _move_finished(self, event: MutableMapping[str, Any]) -> None:
        self.moves.labels("moved").inc()
        if isinstance(event.get("seconds"), (int, float)):
            self.move_seconds.observe(float(event["seconds"]))
        if isinstance(event.get("bytes_copied"), int):
            self.copied.inc(event["bytes_copied"])

    def _step(self, event: MutableMapping[str, Any]) -> None:
        if isinstance(event.get("seconds"), (int, float)):
            self.step_seconds.labels(str(event.get("step", ""))).observe(float(event["seconds"]))

    def _notice(self, event: MutableMapping[str, Any], fate: str) -> None:
        self.notices.labels(str(event.get("notice_type", "")), fate).inc()


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
