"""Return to service, pure (issue 20): since when a host takes VMs again, and which VMs go back to it.

A host that recovers is held down first by its detector (monitors.hold_down_seconds: a raised severity is
kept that long after its last sighting, and a flapping host stays quarantined), so it says healthy only once
the hold-down has passed; it is *in service* from then, unless drained. With `move_back` on it asks for the
VMs that left it before that moment (`move_back_since` in its state). The host that runs such a VM offers it
back through the tenant contract, once: the VM's origin record is removed as the offer is made
(hypervisor/origin.py, incident/returns.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from evacuator.placement.model import HostState, Verdict


class InService:
    """Follows this host's verdicts and maintenance into the moment it came (back) into service."""

    def __init__(self) -> None:
        self._since: datetime | None = None
        self._maintenance = False

    @property
    def since(self) -> datetime | None:
        return self._since

    @property
    def maintenance(self) -> bool:
        """In maintenance: drained, or set so in the settings (placement.maintenance)."""
        return self._maintenance

    def set_maintenance(self, maintenance: bool) -> None:
        """Drained (not in service), or undrained (in service again from the next observation)."""
        self._maintenance = maintenance
        if maintenance:
            self._since = None

    def observe(self, verdict: Verdict, now: datetime) -> datetime | None:
        """Since when the host is in service (healthy, not in maintenance), None while it is not."""
        if verdict is not Verdict.HEALTHY or self._maintenance:
            self._since = None
        elif self._since is None:
            self._since = now
        return self._since


@dataclass(frozen=True, slots=True, kw_only=True)
class Departed:
    """A VM running here that was evacuated from `origin` at `left_at` (its origin record)."""

    vm_uuid: str
    origin: str
    left_at: datetime


def welcoming(states: Iterable[tuple[HostState, datetime | None]], now: datetime,
              stale_after_seconds: float) -> dict[str, datetime]:  # fmt: skip
    """The hosts that want their VMs back (their `move_back_since`), among those that may take VMs now:
    healthy, fresh, neither quarantined nor in maintenance, accepting."""
    return {
        state.name: since for state, since in states
        if since is not None and state.verdict is Verdict.HEALTHY and state.fresh(now, stale_after_seconds)
        and not state.quarantined and not state.maintenance and state.accepting
    }  # fmt: skip


def returns_due(own_host: str, departed: Iterable[Departed],
                wanted: Mapping[str, datetime]) -> dict[str, str]:  # fmt: skip
    """Which of this host's VMs go back, and where (VM uuid -> origin): those whose origin wants them back and
    left it before it came back into service (a VM that left later left a host in service: it stays)."""
    return {
        vm.vm_uuid: vm.origin for vm in departed
        if vm.origin != own_host and (since := wanted.get(vm.origin)) is not None and vm.left_at < since
    }  # fmt: skip
