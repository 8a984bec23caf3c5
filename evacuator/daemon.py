"""The daemon's life cycle: configure logging, build the runtime, poll until SIGTERM, shut down cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import structlog

from evacuator.logs import configure_logging
from evacuator.settings import Settings
from evacuator.wiring.runtime import build_runtime

log = structlog.get_logger(__name__)


def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; startup errors propagate so the CLI exits non-zero for systemd."""
    configure_logging(settings.logging.format, level=settings.logging.level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("daemon_stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    runtime = build_runtime(settings)
    runtime.start()
    log.info(
        "daemon_started",
        host=settings.host.name,
        peers=[p.name for p in settings.peers],
        poll_interval_seconds=settings.monitors.poll_interval_seconds,
    )
    try:
        runtime.poll_until(stop)
    finally:
        runtime.stop()
        log.info("daemon_stopped", host=settings.host.name)
    return 0
