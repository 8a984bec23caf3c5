"""How many refusals of its replies a tenant hears: a token bucket per tenant, pure over values.

Each refusal the desk answers costs the hypervisor an outbox write (fsync) and a publish, and a warning in the
journal; a tenant publishing thousands of bad replies a second must not turn them into as many. Past its
bucket, a tenant's refusals are counted and reported in one line per interval instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectionLimit:
    """At most `burst` refusals answered at once, then `per_minute` a minute; what is held back is reported
    at most once every `report_interval_seconds`."""

    burst: int
    per_minute: float
    report_interval_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_minute <= 0 or self.report_interval_seconds <= 0:
            raise ValueError(f"a rejection limit needs burst >= 1 and positive rates, not {self!r}")


# A client with a bug hears about its first twenty bad replies at once and one every three seconds after:
# enough to debug it; a flood costs the host one notice every three seconds per tenant. (A settings field
# `replies.rejections_per_minute` would carry it; until then, this constant.)
DEFAULT_REJECTION_LIMIT = RejectionLimit(burst=20, per_minute=20.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantBucket:
    """One tenant's bucket, kept as the time it is full again (`full_at`: a generic cell rate algorithm, exact
    in timedelta arithmetic where counting fractional tokens drifts), the latest time seen, and the refusals
    held back since the last report."""

    full_at: datetime
    seen_at: datetime
    suppressed: int = 0
    reported_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """Whether to answer this refusal, the tenant's bucket after it, and how many held-back refusals to
    report now (0: none)."""

    answer: bool
    bucket: TenantBucket
    report: int = 0


def admit(bucket: TenantBucket | None, *, now: datetime, limit: RejectionLimit) -> Admission:
    """One refusal of a tenant whose bucket is `bucket` (None: never seen, so full) at `now`."""
    if bucket is None:
        bucket = TenantBucket(full_at=now, seen_at=now)
    # A clock stepped back counts as not moved: it neither earns tokens nor takes them away.
    now = max(now, bucket.seen_at)
    each = _each(limit)
    full_at = max(bucket.full_at, now)
    answer = full_at - now <= each * (limit.burst - 1)
    suppressed, reported_at = bucket.suppressed, bucket.reported_at
    if answer:
        full_at += each
    else:
        suppressed += 1
    report = 0
    if suppressed and (reported_at is None or now - reported_at >= _interval(limit)):
        report, suppressed, reported_at = suppressed, 0, now
    after = TenantBucket(full_at=full_at, seen_at=now, suppressed=suppressed, reported_at=reported_at)
    return Admission(answer=answer, bucket=after, report=report)


def is_idle(bucket: TenantBucket, *, now: datetime, limit: RejectionLimit) -> bool:
    """Whether forgetting the bucket changes nothing: full again, nothing to report, no report lately."""
    recent = bucket.reported_at is not None and now - bucket.reported_at < _interval(limit)
    return now >= bucket.full_at and not bucket.suppressed and not recent


def _each(limit: RejectionLimit) -> timedelta:
    """The time one token takes to come back."""
    return timedelta(seconds=60.0 / limit.per_minute)


def _interval(limit: RejectionLimit) -> timedelta:
    return timedelta(seconds=limit.report_interval_seconds)
