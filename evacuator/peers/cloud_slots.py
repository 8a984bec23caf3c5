"""Cloud-wide caps on disk transfers, counted on the shared broker: in total, and into each destination.

A cap of N is N slot queues, `<prefix>.<name>.<k>`; holding slot k means being the exclusive consumer of
queue k, which the broker grants to one connection at a time. A holder that dies (SIGKILL, power loss, a cut
link) loses its connection and with it the slot, without anyone cleaning up, and nothing needs seeding or
counting, so hosts may start, stop and crash in any order. Every host must configure the same caps. Each held
slot has its own connection, serviced on its own thread so its heartbeats go on while the transfer runs on
the mover's. Slots are taken in one order everywhere (the destination's, then the total's), so two movers
never wait for each other's.

A failing host must still be evacuated, so the caps fail open: when the broker cannot be reached the move
goes ahead without a cloud-wide slot and says so (`cluster_slot_unavailable`), and no wait is unbounded: after
`max_wait_seconds` (a failed host's move: a moment) the move goes ahead without its slot
(`cluster_slot_wait_expired`), so a host that holds the slots cannot stall the others' evacuations for long.
There is no priority across hosts: waiters retry every `retry_seconds` (with jitter) and the first to ask
after a release wins. The slot queues live in the peers vhost, where only hosts' users may touch them.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import pika.exceptions
import structlog

from notifiers.connection import ACCESS_REFUSED, CONNECTION_ERRORS, ConnectionFactory

log = structlog.get_logger(__name__)

_POLL_SECONDS = 0.25
# How long a move waits for a cloud-wide slot before it goes ahead without one; a failed host's move waits
# only for the first try (its VMs are on a dying host: the cap must not keep them there).
DEFAULT_MAX_WAIT_SECONDS = 300.0
URGENT_WAIT_SECONDS = 2.0
_REPORT_WAIT_SECONDS = 60.0
_JOIN_TIMEOUT_SECONDS = 30.0


class BrokerCloudCaps:
    """At most `incoming_per_host` transfers into any one destination and `total` in the cloud (None: no
    such cap)."""

    def __init__(
        self, connect: ConnectionFactory, *, prefix: str, total: int | None, incoming_per_host: int | None,
        retry_seconds: float = 0.5, max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        self._connect = connect
        self._prefix = prefix
        self.total = total
        self.incoming_per_host = incoming_per_host
        self._retry_seconds = retry_seconds
        self._max_wait_seconds = max_wait_seconds

    @contextmanager
    def hold(self, *, destination: str, vm_uuid: str, urgent: bool = False) -> Iterator[None]:
        """Holds the slots a transfer to `destination` needs, waiting at most `max_wait_seconds` for each (an
        `urgent` move, a failed host's: URGENT_WAIT_SECONDS), then going ahead without it."""
        caps = ((incoming_prefix(self._prefix, destination), self.incoming_per_host),
                (total_prefix(self._prefix), self.total))  # in this order everywhere: see the module's note
        wait_seconds = min(self._max_wait_seconds, URGENT_WAIT_SECONDS) if urgent else self._max_wait_seconds
        with ExitStack() as held:
            for prefix, slots in caps:
                if slots is not None:
                    pool = BrokerClusterSlots(self._connect, prefix=prefix, total=slots,
                                              retry_seconds=self._retry_seconds)
                    held.enter_context(pool.hold(vm_uuid=vm_uuid, max_wait_seconds=wait_seconds))
            yield

    def hold_now(self, *, destination: str, vm_uuid: str) -> AbstractContextManager[bool]:
        """Holds nothing: trying costs a broker round trip per slot queue, and the slot may be one that a VM
        already off on another host waits for. So there is no pre-copy under cloud-wide caps."""
        return nullcontext(False)


def slot_queue(prefix: str, index: int) -> str:
    return f"{prefix}.{index}"


def incoming_prefix(exchange: str, destination: str) -> str:
    return f"{exchange}.incoming-slot.{destination}"


def total_prefix(exchange: str) -> str:
    return f"{exchange}.total-slot"


class BrokerClusterSlots:
    """One cap: `total` slot queues named `<prefix>.<k>`."""

    def __init__(
        self, connect: ConnectionFactory, *, prefix: str, total: int, retry_seconds: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if total < 1:
            raise ValueError("the cloud-wide transfer cap must be at least 1")
        self._connect = connect
        self._prefix = prefix
        self._total = total
        self._retry_seconds = retry_seconds
        self._rng = rng

    @contextmanager
    def hold(self, *, vm_uuid: str, max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS) -> Iterator[None]:
        holder = _Holder(self, vm_uuid)
        holder.start()
        try:
            if not holder.wait_acquired(max_wait_seconds):
                log.warning("cluster_slot_wait_expired", vm_uuid=vm_uuid, prefix=self._prefix,
                            waited_seconds=max_wait_seconds)
                holder.release()  # the move goes ahead without this slot; the holder stops trying
            yield
        finally:
            holder.release()

    def open_connection(self) -> Any:
        return self._connect()

    def try_take(self, connection: Any) -> int | None:
        """Slot index held by `connection` (its channel stays open), or None when all are taken."""
        first = int(self._rng() * self._total)  # hosts start at different slots rather than all at slot 1
        for offset in range(self._total):
            index = (first + offset) % self._total + 1
            channel = connection.channel()
            queue = slot_queue(self._prefix, index)
            channel.queue_declare(queue=queue, durable=True)  # its failure is no "taken": it propagates
            try:
                channel.basic_consume(queue=queue, on_message_callback=_ignore, auto_ack=True, exclusive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == ACCESS_REFUSED and "exclusive use" in str(exc.reply_text):
                    continue  # another host holds it; the refusal closed this channel: try the next
                raise
            return index
        return None

    def retry_delay_seconds(self) -> float:
        return self._retry_seconds * (0.5 + self._rng())


class _Holder:
    """One slot's connection on its own thread: takes a slot, keeps the connection alive, lets go."""

    def __init__(self, slots: BrokerClusterSlots, vm_uuid: str) -> None:
        self._slots = slots
        self._vm_uuid = vm_uuid
        self._settled = threading.Event()  # a slot is held, or the cap was given up (fail open)
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cluster-slot-{vm_uuid[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_acquired(self, timeout_seconds: float) -> bool:
        """Whether a slot is held (or the cap was given up, failing open) within `timeout_seconds`."""
        return self._settled.wait(timeout_seconds)

    def release(self) -> None:
        self._released.set()
        self._settled.set()
        self._thread.join(timeout=_JOIN_TIMEOUT_SECONDS)

    def _run(self) -> None:
        try:
            connection = self._slots.open_connection()
        except Exception as exc:  # BrokerUnavailable, or anything else pika raises while connecting
            log.warning("cluster_slot_unavailable", vm_uuid=self._vm_uuid, error=str(exc))
            self._settled.set()
            return
        try:
            self._hold(connection)
        except Exception as exc:  # a refused permission, a queue whose node is down: fail open, loudly
            event = "cluster_slot_lost" if self._settled.is_set() else "cluster_slot_unavailable"
            log.warning(event, vm_uuid=self._vm_uuid, error=repr(exc),
                        exc_info=not isinstance(exc, CONNECTION_ERRORS))
        finally:
            self._settled.set()
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()

    def _hold(self, connection: Any) -> None:
        began = time.monotonic()
        reported = began
        index = self._slots.try_take(connection)
        while index is None:
            if self._released.is_set():
                return
            if time.monotonic() - reported >= _REPORT_WAIT_SECONDS:
                # Every slot busy for long is normal in a big evacuation, but it must not look like a hang.
                log.info("cluster_slot_waiting", vm_uuid=self._vm_uuid,
                         waited_seconds=round(time.monotonic() - began))
                reported = time.monotonic()
            connection.sleep(self._slots.retry_delay_seconds())  # services heartbeats while it waits
            index = self._slots.try_take(connection)
        if time.monotonic() - began > 0.01:
            log.info("cluster_slot_waited", vm_uuid=self._vm_uuid, slot=index,
                     waited_seconds=round(time.monotonic() - began, 3))
        self._settled.set()
        while not self._released.is_set():
            connection.process_data_events(time_limit=_POLL_SECONDS)


def _ignore(_channel: Any, _method: Any, _properties: Any, _body: bytes) -> None:
    """Slot queues carry no messages; consuming them is only how a slot is held."""
