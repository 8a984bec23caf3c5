"""Move back (issue 20): this host offers the VMs it runs back to the hosts they were evacuated from, once
those are in service again and ask for them (placement/returns.py decides, hypervisor/origin.py records).

Checked at every poll, cheaply: VMs are listed only when some host asks. An offer is a planned incident on
this host (Service.offer_returns): the tenants hear of it as of a drain, with a `move_back` reason, and each
VM goes to its origin or nowhere. The origin record is removed as the offer is made, so a VM is offered back
once: a tenant's cancel, a full origin or a failed move leave it here for good, and nothing loops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.errors import HypervisorError
from evacuator.hypervisor.model import Hypervisor
from evacuator.placement.returns import Departed, returns_due, welcoming
from evacuator.placement.view import Heard
from monitors.verdicts import HostVerdict, Severity

log = structlog.get_logger(__name__)


class HeardHosts(Protocol):
    """Every host's latest state as received (peers/host_view.py HostView)."""

    def heard(self) -> list[Heard]: ...


class ReturnsDesk(Protocol):
    """Opens the planned incident of a move back (incident/service.py Service)."""

    def offer_returns(self, returns: Mapping[str, str]) -> str | None: ...


class MoveBackOffers:
    """`reachable(host)`: whether this host's engine can reach that host's libvirt (a peer, or any host that
    publishes its URI with placement.scope cloud): an unreachable origin is never offered anything."""

    def __init__(self, *, host: str, hypervisor: Hypervisor, view: HeardHosts, desk: ReturnsDesk,
                 reachable: Callable[[str], bool], stale_after_seconds: float,
                 clock: Callable[[], datetime]) -> None:  # fmt: skip
        self._host = host
        self._hypervisor = hypervisor
        self._view = view
        self._desk = desk
        self._reachable = reachable
        self._stale_after_seconds = stale_after_seconds
        self._clock = clock

    def check(self, verdict: HostVerdict, *, maintenance: bool) -> str | None:
        """Offers what is due, when this host is healthy and in service itself; the incident's id, if any."""
        if verdict.severity is not Severity.HEALTHY or maintenance:
            return None
        asking = welcoming(((h.state, h.move_back_since) for h in self._view.heard()), self._clock(),
                           self._stale_after_seconds)  # fmt: skip
        wanted = {host: since for host, since in asking.items()
                  if host != self._host and self._reachable(host)}  # fmt: skip
        if not wanted:
            return None
        departed = [Departed(vm_uuid=vm.uuid, origin=vm.origin.host, left_at=vm.origin.left_at)
                    for vm in self._hypervisor.list_vms() if vm.origin is not None]  # fmt: skip
        due = returns_due(self._host, departed, wanted)
        if not due:
            return None
        incident_id = self._desk.offer_returns(due)
        if incident_id is None:
            return None  # another incident is open: offered at a later poll
        for vm_uuid in due:
            try:
                self._hypervisor.set_origin(vm_uuid, None)
            except HypervisorError as exc:  # offered anyway; it may be offered again after this incident
                log.warning("vm_origin_not_cleared", vm_uuid=vm_uuid, error=str(exc))
        log.info("move_back_offered", incident_id=incident_id, vm_uuids=sorted(due),
                 to_hosts=sorted(set(due.values())))  # fmt: skip
        return incident_id
