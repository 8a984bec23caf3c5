"""Opening a libvirt connection that cannot hang a move: a bounded open, keepalive, and quiet errors."""

from __future__ import annotations

import threading
from typing import Any

import libvirt
import structlog

from evacuator.errors import HypervisorError

log = structlog.get_logger(__name__)


def _quiet(context: object, error: object) -> None:
    """libvirt's default handler prints every error to stderr, even the "not found" answers the migrator
    expects while it reads where a VM really is; the errors still reach us as exceptions (the host adapter
    maps them)."""


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """libvirt's keepalive needs its event loop running in the process (RECIPES); started once."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def connect_libvirt(
    name: str, uri: str, *, keepalive_interval_seconds: int = 5, keepalive_count: int = 3,
    open_timeout_seconds: float = 60.0, read_only: bool = False,
) -> Any:
    """A read-write connection to the libvirt of host `name` (`read_only`: one that can only look, for
    watching the host).

    A host that stops answering (hung daemon, dead link) must fail a move, not stall it forever: the open is
    bounded (a stopped daemon accepts the TCP connection and never replies), and keepalive closes the
    connection after `interval * count` seconds of silence, which aborts a stream copy in progress."""
    libvirt.registerErrorHandler(_quiet, None)
    _ensure_event_loop()
    outcome: list[Any] = []

    def connect() -> None:
        try:
            outcome.append(libvirt.openReadOnly(uri) if read_only else libvirt.open(uri))
        except libvirt.libvirtError as exc:
            outcome.append(exc)

    opener = threading.Thread(target=connect, name=f"libvirt-open-{name}", daemon=True)
    opener.start()
    opener.join(open_timeout_seconds)
    if not outcome:
        # The opener thread stays blocked until the host answers or the process ends: a rare, bounded leak.
        raise HypervisorError(f"host {name}: {uri} did not answer within {open_timeout_seconds:.0f} s")
    if isinstance(outcome[0], libvirt.libvirtError):
        raise HypervisorError(
            f"host {name}: cannot connect to {uri}: {outcome[0].get_error_message()}") from outcome[0]
    connection = outcome[0]
    try:
        connection.setKeepAlive(keepalive_interval_seconds, keepalive_count)
    except libvirt.libvirtError as exc:
        # Local drivers (test:///) have no keepalive; a remote daemon always does.
        log.warning("libvirt_keepalive_unavailable", host=name, error=exc.get_error_message())
    return connection


