"""This host's daemon publishing its host's state on the peers exchange, on change and every interval, on
its own connection and thread (host_state.py has the message and who may send it)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
import structlog

from evacuator.errors import HypervisorError
from evacuator.hypervisor.room import HostRoom, RoomReader
from evacuator.peers.host_state import HostStateMessage, RoomWire, state_routing_key
from evacuator.peers.messages import declare_exchange
from evacuator.placement.model import Verdict
from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory
from notifiers.errors import BrokerUnavailable
from notifiers.topology import check_word

log = structlog.get_logger(__name__)

_NO_ROOM = HostRoom(memory_capacity_bytes=0, memory_free_bytes=0, vcpus_capacity=0, vcpus_free=0,
                    pool_capacity_bytes=0, pool_allocation_bytes=0, pool_available_bytes=0, running_vms=0)
_RECONNECT_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0)
# A state outlives its interval a little, so a subscriber that was briefly slow still gets the latest one,
# and never long, so nothing stale waits in a queue to be mistaken for news.
EXPIRY_INTERVALS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus:
    """What the daemon's health monitoring says of its host now."""

    verdict: Verdict = Verdict.UNKNOWN  # until the first poll: never a destination
    reasons: tuple[str, ...] = ()
    quarantined: bool = False
    # In service (healthy past its hold-down, not in maintenance) since then (placement/returns.py).
    in_service_since: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Switches:
    """What the settings say of this host in its state: in maintenance, or not accepting VMs, it takes none;
    `libvirt_uri` and `storage_pool` (host.advertised_libvirt_uri, host.storage_pool), published when set,
    let hosts that do not list it as a peer send it VMs (placement.scope cloud)."""

    maintenance: bool = False
    accepting: bool = True
    libvirt_uri: str | None = None
    storage_pool: str | None = None
    move_back: bool = False  # return_to_service.move_back: ask for the VMs that left it, once in service


def build_state(*, host: str, incarnation: str, sequence: int, sent_at: datetime, status: HostStatus,
                switches: Switches, room: HostRoom | None,
                evacuating_since: datetime | None = None) -> HostStateMessage:  # fmt: skip
    """The message for this moment. Without a room (libvirt unreadable) the host says it is alive but
    unknown and takes nothing, rather than falling silent: its peers then know why."""
    reasons = status.reasons if room is not None else ("room unreadable: libvirt did not answer",
                                                        *status.reasons)  # fmt: skip
    return HostStateMessage(
        host=host, incarnation=incarnation, sequence=sequence, sent_at=sent_at,
        verdict=status.verdict if room is not None else Verdict.UNKNOWN,
        reasons=[reason[:200] for reason in reasons[:16]],
        quarantined=status.quarantined, maintenance=switches.maintenance,
        accepting=switches.accepting and room is not None, room=RoomWire.of(room or _NO_ROOM),
        libvirt_uri=switches.libvirt_uri,
        storage_pool=switches.storage_pool if switches.libvirt_uri is not None else None,
        evacuating_since=evacuating_since,
        move_back_since=status.in_service_since if switches.move_back else None,
    )  # fmt: skip


class HostStatePublisher:
    """Publishes this host's state as its own broker user (`user_id`, which the broker checks), transient
    and expiring after EXPIRY_INTERVALS intervals: at once when the status changes or `refresh()` asks,
    and every `interval_seconds` whatever happens, so peers can tell a live host from a gone one."""

    def __init__(self, connect: ConnectionFactory, *, own_user: str, host: str, exchange: str,
                 room: RoomReader, interval_seconds: float, switches: Switches,
                 clock: Callable[[], datetime]) -> None:  # fmt: skip
        self._connect = connect
        self._own_user = own_user
        self._host = check_word("host", host)
        self._exchange = exchange
        self._room = room
        self._interval_seconds = interval_seconds
        self._switches = switches
        self._clock = clock
        self.incarnation = uuid.uuid4().hex
        self._sequence = 0
        self._status = HostStatus()
        self._evacuating_since: datetime | None = None
        self._lock = threading.Lock()
        self._due = threading.Event()  # publish now, not at the next interval
        self._stopping = threading.Event()
        self._connection: Any | None = None  # the publishing thread's, for waking it
        self._ready: Future[None] = Future()
        self._thread: threading.Thread | None = None
        self.published = 0

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Connect and publish the first state; raise BrokerUnavailable if the first connection fails."""
        self._thread = threading.Thread(target=self._run, name=f"host-state-{self._host}", daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=timeout_seconds)
        except BaseException:
            self.close()
            raise

    def close(self, *, timeout_seconds: float = 10.0) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=timeout_seconds)

    def set_status(self, status: HostStatus) -> None:
        """The host's health now; a change is published at once."""
        with self._lock:
            changed, self._status = status != self._status, status
        if changed:
            self.refresh()

    def set_maintenance(self, maintenance: bool) -> None:
        """In maintenance (`evacuator drain`) or back in service (`undrain`): published at once."""
        with self._lock:
            changed = maintenance != self._switches.maintenance
            self._switches = replace(self._switches, maintenance=maintenance)
        if changed:
            self.refresh()

    def set_evacuating(self, since: datetime | None) -> None:
        """This host evacuates since `since` (None: no longer), under the blast-radius guards
        (moves/guard.py); published at once, so the other hosts count it."""
        with self._lock:
            changed, self._evacuating_since = since != self._evacuating_since, since
        if changed:
            self.refresh()

    def refresh(self) -> None:
        """Publish at once (the room changed: a VM arrived or left)."""
        self._due.set()
        self._wake()

    def _wake(self) -> None:
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(*CONNECTION_ERRORS, pika.exceptions.ConnectionWrongStateError):
                connection.add_callback_threadsafe(lambda: None)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                connection = self._connect()
            except Exception as exc:
                if not self._ready.done():
                    self._ready.set_exception(exc if isinstance(exc, BrokerUnavailable) else
                                              BrokerUnavailable(f"host state of {self._host}: {exc!r}"))
                    return
                log.warning("broker_reconnect_failed", role="host-state", host=self._host, error=repr(exc))
                delays = _RECONNECT_DELAYS_SECONDS
                self._stopping.wait(delays[min(failures, len(delays) - 1)])
                failures += 1
                continue
            failures = 0
            self._connection = connection
            try:
                self._serve(connection)
            except CONNECTION_ERRORS as exc:
                # A refused publish (403: a key this user may not publish) closes the channel too.
                log.warning("host_state_publish_failed", host=self._host, error=repr(exc))
                if not self._ready.done():
                    self._ready.set_exception(BrokerUnavailable(f"host state of {self._host}: {exc!r}"))
                    return
                self._stopping.wait(_RECONNECT_DELAYS_SECONDS[0])
            finally:
                self._connection = None
                with contextlib.suppress(*CONNECTION_ERRORS):
                    connection.close()

    def _serve(self, connection: Any) -> None:
        channel = connection.channel()
        channel.confirm_delivery()  # a refusal shows on this publish, not the next one
        declare_exchange(channel, self._exchange)
        next_at = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._due.is_set() or now >= next_at:
                self._due.clear()
                self._publish(channel)
                if not self._ready.done():
                    self._ready.set_result(None)
                next_at = now + self._interval_seconds
            # Until the next state is due: heartbeats are served inside the wait, and set_status, refresh
            # and close wake it (_wake). Waking more often cost 200 daemons 1,000 idle wake-ups a second
            # in bench/bench_host_view.py.
            connection.process_data_events(time_limit=max(0.0, next_at - time.monotonic()))

    def _publish(self, channel: Any) -> None:
        try:
            room: HostRoom | None = self._room.read_room()
        except HypervisorError as exc:
            log.warning("host_room_unreadable", host=self._host, error=str(exc))
            room = None
        with self._lock:
            status, sequence, since, switches = (self._status, self._sequence, self._evacuating_since,
                                                 self._switches)  # fmt: skip
            self._sequence += 1
        message = build_state(host=self._host, incarnation=self.incarnation, sequence=sequence,
                              sent_at=self._clock(), status=status, switches=switches, room=room,
                              evacuating_since=since)  # fmt: skip
        channel.basic_publish(
            exchange=self._exchange, routing_key=state_routing_key(self._host),
            body=message.model_dump_json(exclude_none=True).encode(),
            properties=pika.BasicProperties(
                user_id=self._own_user, content_type="application/json", delivery_mode=1,
                expiration=str(int(self._interval_seconds * EXPIRY_INTERVALS * 1000)),
            ),
        )
        self.published += 1
