"""FakeWindows and RecordingWindowStore: the reply desk's two ports, recording what they were asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from evacuator.incident.windows import WindowChange


@dataclass(slots=True)
class FakeWindows:
    """The EvacuationWindows fake: open windows by VM. `close_behind(vm)` closes a window right after the next
    look at it, as a timer firing between the desk's decision and its change does."""

    deadlines: dict[str, datetime] = field(default_factory=dict)
    expedited: list[str] = field(default_factory=list)
    postponed: list[tuple[str, datetime]] = field(default_factory=list)
    _closing: set[str] = field(default_factory=set)

    def open(self, vm_uuid: str, deadline: datetime) -> None:
        self.deadlines[vm_uuid] = deadline

    def close_behind(self, vm_uuid: str) -> None:
        self._closing.add(vm_uuid)

    def deadline(self, vm_uuid: str) -> datetime | None:
        deadline = self.deadlines.get(vm_uuid)
        if vm_uuid in self._closing:
            self._closing.discard(vm_uuid)
            self.deadlines.pop(vm_uuid, None)
        return deadline

    def expedite(self, vm_uuid: str) -> WindowChange:
        if self.deadlines.pop(vm_uuid, None) is None:
            return WindowChange.NOT_PENDING
        self.expedited.append(vm_uuid)
        return WindowChange.APPLIED

    def postpone(self, vm_uuid: str, deadline: datetime) -> WindowChange:
        if vm_uuid not in self.deadlines:
            return WindowChange.NOT_PENDING
        self.deadlines[vm_uuid] = deadline
        self.postponed.append((vm_uuid, deadline))
        return WindowChange.APPLIED


@dataclass(slots=True)
class RecordingWindowStore:
    """The WindowStore fake: records each stored window, or raises after inject_error."""

    stored: list[tuple[str, int]] = field(default_factory=list)
    error: Exception | None = None

    def inject_error(self, exc: Exception) -> None:
        self.error = exc

    def store_window(self, vm_uuid: str, window_seconds: int) -> None:
        if self.error is not None:
            raise self.error
        self.stored.append((vm_uuid, window_seconds))
