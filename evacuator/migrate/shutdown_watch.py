"""Waits for a VM that was asked to shut down to be off, powering it off at a deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime

import structlog

from evacuator.errors import HypervisorError
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.transfer.chunks import Chunk

log = structlog.get_logger(__name__)


class ShutdownWatch:
    """Whether a VM is off yet. `wait` sleeps between looks until it is; during a pre-copy, `polled` looks
    between the chunks sent (on the sending thread, at most every `poll_interval_seconds`) and `off` is read
    by the reading thread. Either powers the VM off once `deadline` has passed."""

    def __init__(self, *, host: Hypervisor, vm_uuid: str, deadline: datetime, clock: Callable[[], datetime],
                 poll_interval_seconds: float) -> None:
        self._host = host
        self._vm_uuid = vm_uuid
        self._deadline = deadline
        self._clock = clock
        self._interval_seconds = poll_interval_seconds
        self._looked_at: datetime | None = None
        self._during = "shutdown"
        self.off = threading.Event()
        self.forced_off = False

    def wait(self, sleep: Callable[[float], None]) -> None:
        self._look()
        while not self.off.is_set():
            sleep(self._interval_seconds)
            self._look()

    def polled(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        self._during = "precopy"
        try:
            for chunk in chunks:
                if self._looked_at is None or (
                        (self._clock() - self._looked_at).total_seconds() >= self._interval_seconds):
                    self._look()
                yield chunk
        finally:
            self._during = "shutdown"

    def _look(self) -> None:
        if self.off.is_set():
            return
        now = self._looked_at = self._clock()
        vm = self._host.find_vm(self._vm_uuid)
        if vm is None:
            raise HypervisorError(f"host {self._host.name}: VM {self._vm_uuid} vanished while shutting down")
        if vm.state is VmState.SHUT_OFF:
            self.off.set()
        elif now >= self._deadline:
            log.warning("vm_forced_off", vm_uuid=self._vm_uuid, host=self._host.name, during=self._during)
            self._host.destroy_vm(self._vm_uuid)
            self.forced_off = True
            self.off.set()
