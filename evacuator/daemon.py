"""The daemon's life cycle: configure logging, build the runtime, poll until SIGTERM, shut down cleanly."""

from __future__ import annotations

import os
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
    _stop_on_signals(stop)

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


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`, from a thread of their own. A Python signal handler runs on the main
    thread between two bytecodes, even inside a lock the main thread holds (structlog's write lock, the
    Event's own): logging or setting the Event there could deadlock, and `systemctl stop` would then wait for
    SIGKILL. So the handlers do nothing, and the interpreter's C-level handler writes each signal's number to
    a pipe (signal.set_wakeup_fd), which the thread reads."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _ignore)

    def watch() -> None:
        while True:
            number = os.read(read_fd, 1)[0]
            if number in _STOP_SIGNALS:
                log.info("daemon_stopping", signal=signal.Signals(number).name)
                stop.set()

    threading.Thread(target=watch, name="evacuator-signals", daemon=True).start()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Only the wakeup pipe acts on a stop signal (see _stop_on_signals)."""
