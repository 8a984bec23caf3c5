"""The daemon's life cycle: configure logging, build the runtime, poll until SIGTERM (reloading its policy on
SIGHUP), shut down cleanly."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

import structlog

from evacuator.errors import ConfigError, EvacuatorError, HypervisorError, JournalError, TimerError
from evacuator.logs import configure_logging
from evacuator.metrics import EventMetrics, serve_metrics
from evacuator.settings import Settings
from evacuator.wiring.reload import reload_settings
from evacuator.wiring.runtime import Runtime, build_runtime
from evacuator.wiring.systemd import SystemdNotifier
from monitors.errors import MonitorError, NoWorkingSourceError
from monitors.standing import readings_against_thresholds
from notifiers.errors import NotifierError, OutboxError

log = structlog.get_logger(__name__)

# A start that fails exits with this, so systemd restarts the service (Restart=on-failure).
EXIT_STARTUP_FAILED = 1
# What failed to start, by the error's class (the first that matches): a fixed word to filter the log on.
_STAGES: tuple[tuple[type[Exception], str], ...] = (
    (ConfigError, "settings"), (HypervisorError, "libvirt"), (NoWorkingSourceError, "sensors"),
    (JournalError, "state"), (TimerError, "state"), (OutboxError, "state"), (NotifierError, "broker"),
)


def startup_failed(stage: str, reason: str, **context: object) -> int:
    """Logs a start that failed as one event in the configured format, never a traceback; the exit code."""
    log.error("startup_failed", stage=stage, reason=reason, **context)
    return EXIT_STARTUP_FAILED


def _stage(exc: Exception) -> str:
    return next((stage for kind, stage in _STAGES if isinstance(exc, kind)), "start")


def run_daemon(settings: Settings, *, config_path: Path | None = None) -> int:
    """Run until SIGTERM or SIGINT. A failed start (libvirt, the broker, the sensors, the state files) is
    logged as `startup_failed` with its stage and reason, and returns EXIT_STARTUP_FAILED. Under systemd
    (Type=notify) READY=1 goes out only after libvirt and the broker are connected and the sensors were read
    once, and WATCHDOG=1 after every poll, so a hung poll loop gets the daemon restarted. SIGHUP (systemctl
    reload) reads `config_path` again after the poll under way and applies its policy (wiring/reload.py)."""
    metrics = EventMetrics()
    configure_logging(settings.logging.format, level=settings.logging.level, observers=[metrics])
    stop, hangup = threading.Event(), threading.Event()
    _watch_signals(stop, hangup)
    systemd = SystemdNotifier.from_environment()
    _check_watchdog(systemd, settings.monitors.poll_interval_seconds)

    config = settings.metrics
    stop_metrics = serve_metrics(metrics, address=config.listen_address, port=config.port) \
        if config.enabled else None  # fmt: skip
    systemd.status("connecting to libvirt and the broker")
    try:
        runtime = build_runtime(settings)
        runtime.start()
    except BaseException as exc:
        if stop_metrics is not None:
            stop_metrics()
        if not isinstance(exc, Exception):  # SIGINT while starting, or an exit: not a failed start
            raise
        # An error we know says what failed; anything else is a bug, whose traceback goes in the event.
        known = isinstance(exc, EvacuatorError | MonitorError | NotifierError | OSError)
        return startup_failed(_stage(exc), str(exc), host=settings.host.name, error_type=type(exc).__name__,
                              exc_info=not known)  # fmt: skip
    log.info(
        "daemon_started",
        host=settings.host.name,
        peers=[p.name for p in settings.peers],
        poll_interval_seconds=settings.monitors.poll_interval_seconds,
    )
    first = [True]
    in_force = [settings]

    def after_poll() -> None:
        if first[0]:  # the sensors were read once: the daemon now watches the host
            first[0] = False
            systemd.ready(f"watching {settings.host.name}")
            log.info("daemon_ready", host=settings.host.name, systemd=systemd.enabled)
        elif hangup.is_set():  # between two polls: no decision runs half on the old policy
            hangup.clear()
            in_force[0] = _reload(runtime, in_force[0], config_path, systemd)
        # Each sensor against its threshold, for the metrics (and a debug log): how close to a verdict.
        detector = runtime.detector
        log.debug("sensor_readings", **readings_against_thresholds(detector.policy, detector.state))
        systemd.watchdog()

    try:
        runtime.poll_until(stop, after_each=after_poll)
    finally:
        systemd.stopping("stopping: journaling moves in flight")
        runtime.stop()
        if stop_metrics is not None:
            stop_metrics()
        log.info("daemon_stopped", host=settings.host.name)
    return 0


def _check_watchdog(systemd: SystemdNotifier, poll_interval_seconds: float) -> None:
    """A poll interval longer than half the watchdog's would get a healthy daemon killed between polls."""
    interval = systemd.watchdog_interval_seconds
    if interval is not None and poll_interval_seconds > interval / 2:
        log.warning("daemon_watchdog_too_short", watchdog_seconds=interval,
                    poll_interval_seconds=poll_interval_seconds,
                    hint="set WatchdogSec= to at least twice monitors.poll_interval_seconds")  # fmt: skip


def _reload(runtime: Runtime, current: Settings, path: Path | None, systemd: SystemdNotifier) -> Settings:
    """SIGHUP: the settings file read again, its policy applied; the settings in force afterwards."""
    status = f"watching {current.host.name}"
    systemd.reloading("reloading the settings")
    try:
        if path is None:  # run_daemon was given settings without their file: nothing to read again
            log.error("reload_refused", error="no settings file to read again", kept="the settings in force")
            return current
        return reload_settings(path, current, runtime.policies)
    finally:
        systemd.ready(status)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _watch_signals(stop: threading.Event, hangup: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`, SIGHUP sets `hangup`, from a thread of their own. A Python signal
    handler runs on the main thread between two bytecodes, even inside a lock the main thread holds
    (structlog's write lock, the Event's own): logging or setting the Event there could deadlock, and
    `systemctl stop` would then wait for SIGKILL. So the handlers do nothing, and the interpreter's C-level
    handler writes each signal's number to a pipe (signal.set_wakeup_fd), which the thread reads. SIGHUP's
    default would end the daemon; its reload runs on the poll loop (daemon.py after_poll), between polls."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in (*_STOP_SIGNALS, signal.SIGHUP):
        signal.signal(signum, _ignore)

    def watch() -> None:
        while True:
            number = os.read(read_fd, 1)[0]
            if number in _STOP_SIGNALS:
                log.info("daemon_stopping", signal=signal.Signals(number).name)
                stop.set()
            elif number == signal.SIGHUP:
                log.info("reload_requested", signal="SIGHUP")
                hangup.set()

    threading.Thread(target=watch, name="evacuator-signals", daemon=True).start()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Only the wakeup pipe acts on a signal (see _watch_signals)."""
