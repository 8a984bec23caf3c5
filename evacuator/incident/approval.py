"""What a sick verdict leads to, per severity: evacuate now, wait for the admin's approval, tell the tenants
and move nothing (notify), or quarantine only (settings: evacuation.on_moderate / on_severe / on_failed,
approval_moderate / approval_severe / approval_failed).

Why: an admin trying a new sensor or detector, or running a cloud where moves need a change ticket, wants the
evacuator to say what it would do and wait (VMware Proactive HA's manual mode, draino's dry run). While an
evacuation awaits approval no tenant is told anything; `evacuator approve` lets it begin at the next poll,
`evacuator reject` drops it: the host stays quarantined (a sick host takes no VMs either way) and is not
proposed again until it was healthy once. A healthy verdict forgets any approval or rejection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from monitors.verdicts import HostVerdict, Severity

Action = Literal["evacuate", "notify", "quarantine"]


class Decision(StrEnum):
    EVACUATE = "evacuate"
    AWAIT_APPROVAL = "await_approval"
    NOTIFY = "notify"  # by policy: tell the tenants (host_at_risk), move nothing
    QUARANTINE = "quarantine"  # by policy, or the admin rejected the evacuation
    NOTHING = "nothing"  # not sick


@dataclass(frozen=True, slots=True, kw_only=True)
class EvacuationPolicy:
    on_moderate: Action = "quarantine"  # DESIGN: a moderate host only takes no new VMs, by default
    on_severe: Action = "evacuate"
    on_failed: Action = "evacuate"

    def action(self, severity: Severity) -> Action | None:
        """What a verdict of `severity` leads to; None for one that is not sick."""
        return {Severity.MODERATE: self.on_moderate, Severity.SEVERE: self.on_severe,
                Severity.FAILED: self.on_failed}.get(severity)  # fmt: skip
    manual: frozenset[Severity] = frozenset()  # the severities whose evacuation waits for approval


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """An evacuation awaiting the admin: for which severity (the worst seen), since when."""

    severity: Severity
    since: datetime


class Approvals:
    """The decision for each verdict, and the admin's approvals; thread-safe (the poll loop decides, the
    admin's requests approve or reject)."""

    def __init__(self, policy: EvacuationPolicy) -> None:
        self._policy = policy
        self._lock = threading.Lock()
        self._proposal: Proposal | None = None
        self._approved = False
        self._rejected = False

    def reconfigure(self, policy: EvacuationPolicy) -> None:
        """A new policy per severity (a reload): the next verdict is decided with it."""
        with self._lock:
            self._policy = policy

    def decide(self, verdict: HostVerdict) -> Decision:
        with self._lock:
            action = self._policy.action(verdict.severity)
            if action is None:
                if verdict.severity is Severity.HEALTHY:
                    self._proposal, self._approved, self._rejected = None, False, False
                return Decision.NOTHING
            if action == "quarantine":
                return Decision.QUARANTINE
            if action == "notify":
                return Decision.NOTIFY
            if verdict.severity not in self._policy.manual or self._approved:
                return Decision.EVACUATE
            if self._rejected:
                return Decision.QUARANTINE
            if self._proposal is None or verdict.severity.rank > self._proposal.severity.rank:
                since = verdict.at if self._proposal is None else self._proposal.since
                self._proposal = Proposal(severity=verdict.severity, since=since)
            return Decision.AWAIT_APPROVAL

    def approve(self) -> str:
        with self._lock:
            if self._proposal is None:
                return "refused: no evacuation awaits approval"
            self._approved, self._rejected, self._proposal = True, False, None
            return "accepted: the evacuation begins at the next poll"

    def reject(self) -> str:
        with self._lock:
            if self._proposal is None:
                return "refused: no evacuation awaits approval"
            self._rejected, self._proposal = True, None
            return "accepted: no evacuation; the host stays quarantined until it is healthy again"

    def awaiting(self) -> Proposal | None:
        with self._lock:
            return self._proposal
