"""A hand-written RoomReader: returns the room it is given, records each read, and fails when told to."""

from __future__ import annotations

import dataclasses
import threading

from evacuator.errors import HypervisorError
from evacuator.hypervisor.room import HostRoom

GIB = 1 << 30


def a_room(**changes: object) -> HostRoom:
    """A modest host with one VM: 16 GiB and 8 vCPUs for guests, a 100 GiB pool."""
    room = HostRoom(memory_capacity_bytes=16 * GIB, memory_free_bytes=15 * GIB, vcpus_capacity=8,
                    vcpus_free=7,
                    pool_capacity_bytes=100 * GIB, pool_allocation_bytes=10 * GIB,
                    pool_available_bytes=90 * GIB, running_vms=1, functions=frozenset({("acme", "db")}))
    return dataclasses.replace(room, **changes)  # type: ignore[arg-type]


class FakeRoomReader:
    def __init__(self, room: HostRoom | None = None) -> None:
        self._room = room or a_room()
        self._error: str | None = None
        self._lock = threading.Lock()
        self.reads = 0

    def set(self, room: HostRoom) -> None:
        with self._lock:
            self._room = room

    def inject_error(self, message: str | None) -> None:
        """Every read fails with `message` until it is None again."""
        with self._lock:
            self._error = message

    def read_room(self) -> HostRoom:
        with self._lock:
            self.reads += 1
            if self._error is not None:
                raise HypervisorError(self._error)
            return self._room
