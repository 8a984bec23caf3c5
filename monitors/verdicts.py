"""The detector's output vocabulary: severities, the reasons behind them and the host verdict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Severity(StrEnum):
    """How sick the host is; `unknown` means stale or missing data, never healthy."""

    HEALTHY = "healthy"
    MODERATE = "moderate"
    SEVERE = "severe"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        """Order for "worst wins": a real problem outranks missing data, missing data outranks healthy."""
        return _RANK[self]


_RANK = {
    Severity.HEALTHY: 0,
    Severity.UNKNOWN: 1,
    Severity.MODERATE: 2,
    Severity.SEVERE: 3,
    Severity.FAILED: 4,
}


def worst(severities: list[Severity] | tuple[Severity, ...]) -> Severity:
    """The highest-ranked severity, healthy for none."""
    return max(severities, key=lambda s: s.rank, default=Severity.HEALTHY)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reason:
    """One reading that drove the verdict: which source and sensor, its value against which threshold."""

    source: str
    sensor: str
    value: float | None
    threshold: float | None
    unit: str
    message: str
    severity: Severity = Severity.SEVERE


@dataclass(frozen=True, slots=True, kw_only=True)
class HostVerdict:
    """The host's health at one instant, with every reason that is not healthy."""

    severity: Severity
    reasons: tuple[Reason, ...]
    at: datetime
