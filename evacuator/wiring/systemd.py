"""systemd's notify protocol (sd_notify(3)): READY=1 once the daemon serves, STATUS= lines, WATCHDOG=1 from
the poll loop, RELOADING=1 then READY=1 around a reload, STOPPING=1 on the way out.

The protocol is a few documented lines (one datagram per message, to the AF_UNIX socket named by
$NOTIFY_SOCKET, '@' meaning the abstract namespace), so it is written here rather than pulled in. Without
$NOTIFY_SOCKET (not under systemd, or Type=simple) every call does nothing. Sending never raises: a lost
notification must not stop the daemon, and systemd itself reports what it did not hear (a start timeout, a
watchdog restart).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    """Notifications to the service manager that started this process; a no-op without one."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = address
        self.watchdog_interval_seconds = None if watchdog_usec is None else watchdog_usec / 1_000_000

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """As systemd sets it: $NOTIFY_SOCKET, and $WATCHDOG_USEC when the unit has WatchdogSec= (meant for
        this process only when $WATCHDOG_PID is absent or names it)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        watchdog = int(usec) if usec.isdigit() and int(usec) > 0 and for_us else None
        return cls(address, watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        """The poll loop is alive; systemd restarts the daemon when these stop for WatchdogSec."""
        if self.watchdog_interval_seconds is not None:
            self._send("WATCHDOG=1")

    def reloading(self, status: str) -> None:
        """A reload begins (SIGHUP); READY=1 says it ended. MONOTONIC_USEC is the time the reload began,
        which systemd 253 and later ask for, to tell this reload from one it requested earlier."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\nSTATUS={status}")

    def stopping(self, status: str) -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        # '@' is the abstract namespace, which the kernel spells with a leading NUL byte.
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), target)
        except OSError as exc:
            log.warning("systemd_notify_failed", message=message.split("\n", 1)[0], error=str(exc))
