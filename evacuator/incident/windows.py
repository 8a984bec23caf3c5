"""The port through which a tenant's reply changes its VM's evacuation window, and what came of the change."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Protocol


class WindowChange(StrEnum):
    """What became of a change to a VM's window: made, or refused because the window is no longer open
    (its timer fired, or the move was cancelled, since the caller looked)."""

    APPLIED = "applied"
    NOT_PENDING = "not_pending"


class EvacuationWindows(Protocol):
    """The open evacuation windows of this host's VMs, one per VM, each closed by its timer.

    The caller has decided that the change is allowed; these only carry it out on the timer that is there.
    """

    def deadline(self, vm_uuid: str) -> datetime | None:
        """When the VM's window closes and its move starts; None if no window is open."""
        ...

    def expedite(self, vm_uuid: str) -> WindowChange:
        """Closes the VM's window now, so its move starts at once."""
        ...

    def postpone(self, vm_uuid: str, deadline: datetime) -> WindowChange:
        """Moves the closing of the VM's open window to `deadline`."""
        ...
