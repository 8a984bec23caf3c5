"""What opens an incident, pure: a planned one's cause (an admin's drain, a move back) and the windows an
incident gives its VMs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from evacuator.incident.admin import MAINTENANCE_SOURCE
from evacuator.incident.planner import WindowPolicy
from monitors.verdicts import HostVerdict, Reason, Severity


def _planned(sensor: str, message: str, now: datetime) -> HostVerdict:
    # Severe, as a sick host's: the same contract and guards; the one reason's source marks it planned
    # (ledger.py Incident.planned), and the tenants hear severity maintenance.
    cause = Reason(source=MAINTENANCE_SOURCE, sensor=sensor, value=None, threshold=None, unit="",
                   message=message[:1024])  # fmt: skip
    return HostVerdict(severity=Severity.SEVERE, reasons=(cause,), at=now)


def drain_verdict(reason: str, now: datetime) -> HostVerdict:
    """An admin's drain (`evacuator drain`): the admin's reason is the tenants'."""
    return _planned("drain", reason or "planned maintenance", now)


def return_verdict(returns: Mapping[str, str], now: datetime) -> HostVerdict:
    """A move back (`returns`: VM uuid -> the host it goes back to)."""
    hosts = ", ".join(sorted(set(returns.values())))
    return _planned("move_back", f"back to {hosts}, where they ran before it was evacuated", now)


def windows_for(policy: WindowPolicy, severity: Severity, window_seconds: int | None) -> WindowPolicy:
    """The incident's window policy: a drain's window stands in for the default (never above the cap); a
    failed host gives none."""
    if window_seconds is not None:
        policy = WindowPolicy(default_window_seconds=min(window_seconds, policy.max_window_seconds),
                              max_window_seconds=policy.max_window_seconds)  # fmt: skip
    if severity is Severity.FAILED:
        policy = WindowPolicy(default_window_seconds=0, max_window_seconds=policy.max_window_seconds,
                              immediate=True)  # fmt: skip
    return policy
