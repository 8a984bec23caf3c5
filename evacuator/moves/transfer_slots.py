"""The caps on disk transfers: at most so many out of this host, and so many into each peer, at once (and,
when configured, so many in the whole cloud: evacuator/peers/cloud_slots.py).

The caps hold the part of a move that uses the disks and the link (copy and verify, or a whole live
migration), not the shutdown and start around it: those take seconds each and use neither, so while one VM
shuts down another's disks can travel. `quiesce_ahead_moves` in the engine bounds how many VMs may be off
and waiting for a slot (each such wait is downtime for its tenant).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import structlog

from evacuator.migrate.steps import TransferSlot, TryTransferSlot

log = structlog.get_logger(__name__)


class ClusterSlots(Protocol):
    def hold(self, *, destination: str, vm_uuid: str, urgent: bool = False) -> AbstractContextManager[None]:
        """Waits (a bounded time; hardly at all when `urgent`: a failed host's move) for the cloud-wide slots
        a transfer to `destination` needs and holds them for the block."""
        ...

    def hold_now(self, *, destination: str, vm_uuid: str) -> AbstractContextManager[bool]:
        """Holds them for the block if that needs no waiting (True), else holds nothing (False)."""
        ...


class NoClusterCap:
    """No cloud-wide caps (the default): the per-host caps alone."""

    def hold(self, *, destination: str, vm_uuid: str, urgent: bool = False) -> AbstractContextManager[None]:
        return nullcontext()

    def hold_now(self, *, destination: str, vm_uuid: str) -> AbstractContextManager[bool]:
        return nullcontext(True)


class TransferSlots:
    """A gate shared by every move of one engine; thread-safe. Waiters go by priority, then arrival."""

    def __init__(self, *, max_outgoing: int, max_incoming_per_peer: int) -> None:
        if max_outgoing < 1 or max_incoming_per_peer < 1:
            raise ValueError("transfer caps must be at least 1")
        self._max_outgoing = max_outgoing
        self._max_incoming_per_peer = max_incoming_per_peer
        self._incoming: Counter[str] = Counter()
        self._queue: list[_Waiter] = []  # in the order they may go
        self._seq = itertools.count()
        self._changed = threading.Condition()

    @contextmanager
    def slot(self, destination: str, *, vm_uuid: str = "", priority: int = 0) -> Iterator[None]:
        """Holds one transfer to `destination` for the duration of the block."""
        waiter = _Waiter(destination=destination, priority=priority, seq=next(self._seq))
        began = time.monotonic()
        with self._changed:
            self._queue.append(waiter)
            self._queue.sort(key=lambda w: (-w.priority, w.seq))
            self._changed.wait_for(lambda: self._may_go(waiter))
            self._queue.remove(waiter)
            self._incoming[destination] += 1
            self._changed.notify_all()  # a waiter behind this one may have room now that it left the queue
        waited_seconds = time.monotonic() - began
        if waited_seconds > 0.01:
            log.info("transfer_slot_waited", vm_uuid=vm_uuid, destination=destination,
                     waited_seconds=round(waited_seconds, 3))
        try:
            yield
        finally:
            with self._changed:
                self._incoming[destination] -= 1
                self._changed.notify_all()

    @contextmanager
    def slot_now(self, destination: str, *, vm_uuid: str = "") -> Iterator[bool]:
        """Holds one transfer to `destination` for the block (True) when one is free and nobody waits who
        could take it; else holds nothing (False). For work that may be done or not, such as a pre-copy."""
        with self._changed:
            free = (sum(self._incoming.values()) < self._max_outgoing and self._room(destination)
                    and not any(self._room(w.destination) for w in self._queue))
            if free:
                self._incoming[destination] += 1
        if not free:
            yield False
            return
        # Debug: a window's pre-copy takes one for every pass (every precopy_pass_interval_seconds per VM).
        log.debug("transfer_slot_taken_at_once", vm_uuid=vm_uuid, destination=destination)
        try:
            yield True
        finally:
            with self._changed:
                self._incoming[destination] -= 1
                self._changed.notify_all()

    def wanted(self) -> bool:
        """Whether a move waits for a slot: a window's pre-copy then gives its own up (it may wait; a move
        whose window has ended must not)."""
        with self._changed:
            return bool(self._queue)

    def in_use(self) -> dict[str, int]:
        with self._changed:
            return {peer: count for peer, count in self._incoming.items() if count}

    def _may_go(self, waiter: _Waiter) -> bool:
        if sum(self._incoming.values()) >= self._max_outgoing or not self._room(waiter.destination):
            return False
        # The first waiter with room goes first: no starvation while slots turn over, and one waiting for
        # a full peer does not hold back another bound for a peer with room.
        return next(w for w in self._queue if self._room(w.destination)) is waiter

    def _room(self, destination: str) -> bool:
        return self._incoming[destination] < self._max_incoming_per_peer


def held_transfer(
    slots: TransferSlots, cluster: ClusterSlots, destination: str, priority: int, *, urgent: bool = False
) -> TransferSlot:
    """This host's slot to `destination`, then a cloud-wide one (in that order: no cloud-wide slot is held
    by a move this host's own caps would not run yet). `urgent`: a failed host's move, which the cloud-wide
    caps hold back hardly at all."""

    @contextmanager
    def hold(vm_uuid: str) -> Iterator[None]:
        with slots.slot(destination, vm_uuid=vm_uuid, priority=priority), \
                cluster.hold(destination=destination, vm_uuid=vm_uuid, urgent=urgent):  # fmt: skip
            yield

    return hold


def held_transfer_now(slots: TransferSlots, cluster: ClusterSlots, destination: str) -> TryTransferSlot:
    """As held_transfer, without waiting: the block holds both slots (True) or neither (False)."""

    @contextmanager
    def hold(vm_uuid: str) -> Iterator[bool]:
        with ExitStack() as held:
            got = (held.enter_context(slots.slot_now(destination, vm_uuid=vm_uuid))
                   and held.enter_context(cluster.hold_now(destination=destination, vm_uuid=vm_uuid)))
            if not got:
                held.close()  # this host's slot too: the block runs holding nothing
            yield got

    return hold


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class _Waiter:
    destination: str
    priority: int
    seq: int
