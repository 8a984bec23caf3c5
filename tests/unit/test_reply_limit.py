"""The per-tenant token bucket behind the desk's rejection limit, over fixed timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evacuator.incident.reply_limit import (
    DEFAULT_REJECTION_LIMIT,
    Admission,
    RejectionLimit,
    TenantBucket,
    admit,
    is_idle,
)

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
LIMIT = RejectionLimit(burst=3, per_minute=6.0, report_interval_seconds=60.0)


def _run(offsets_seconds: list[float], limit: RejectionLimit = LIMIT) -> list[Admission]:
    bucket, admissions = None, []
    for offset in offsets_seconds:
        admission = admit(bucket, now=T0 + timedelta(seconds=offset), limit=limit)
        bucket = admission.bucket
        admissions.append(admission)
    return admissions


def test_a_new_tenant_gets_the_whole_burst_then_nothing() -> None:
    admissions = _run([0.0] * 5)
    assert [a.answer for a in admissions] == [True, True, True, False, False]


def test_tokens_come_back_at_the_rate() -> None:
    # 6 a minute: one every 10 s.
    admissions = _run([0, 0, 0, 0, 9.9, 10.0, 10.0, 20.0])
    assert [a.answer for a in admissions] == [True, True, True, False, False, True, False, True]


def test_the_burst_caps_what_a_quiet_tenant_saves_up() -> None:
    admissions = _run([0.0, 3600.0, 3600.0, 3600.0, 3600.0])
    assert [a.answer for a in admissions] == [True, True, True, True, False]


def test_the_first_refusal_held_back_is_reported_at_once_then_once_an_interval_with_the_count() -> None:
    # Burst spent at 0 s; held back: 1 at 0 s (reported), then every second until 59 s; at 60 s the count.
    offsets = [0.0, 0.0, 0.0, 0.0] + [float(s) for s in range(1, 61)]
    admissions = _run(offsets)
    reports = [(offsets[i], a.report) for i, a in enumerate(admissions) if a.report]
    answered = sum(a.answer for a in admissions)
    assert answered == 3 + 6, "the burst, then one every 10 s"
    # Reported: the first held back at once; the rest (60 s: 59 refusals less the 6 answered) at 60 s.
    assert reports == [(0.0, 1), (60.0, len(offsets) - answered - 1)]


def test_an_answered_refusal_reports_what_was_held_back_once_the_interval_is_over() -> None:
    admissions = _run([0, 0, 0, 0, 1, 2, 90])
    assert [(a.answer, a.report) for a in admissions][-3:] == [(False, 0), (False, 0), (True, 2)]
    assert admissions[-1].bucket.suppressed == 0


def test_a_clock_stepped_back_earns_nothing_and_takes_nothing() -> None:
    admissions = _run([100.0, 100.0, 0.0, 0.0])
    assert [a.answer for a in admissions] == [True, True, True, False]


@pytest.mark.parametrize(
    ("bucket", "after_seconds", "idle"),
    [
        (TenantBucket(full_at=T0, seen_at=T0), 0.0, True),
        (TenantBucket(full_at=T0 + timedelta(seconds=30), seen_at=T0), 29.0, False),
        (TenantBucket(full_at=T0 + timedelta(seconds=30), seen_at=T0), 30.0, True),
        (TenantBucket(full_at=T0, seen_at=T0, suppressed=1, reported_at=T0), 3600.0, False),
        (TenantBucket(full_at=T0, seen_at=T0, reported_at=T0), 59.0, False),
        (TenantBucket(full_at=T0, seen_at=T0, reported_at=T0), 60.0, True),
    ],
    ids=["full", "refilling", "refilled", "count_unreported", "reported_lately", "reported_long_ago"],
)
def test_a_bucket_is_forgotten_only_when_that_changes_nothing(
    bucket: TenantBucket, after_seconds: float, idle: bool
) -> None:
    assert is_idle(bucket, now=T0 + timedelta(seconds=after_seconds), limit=LIMIT) is idle


def test_the_default_answers_twenty_at_once_and_one_every_three_seconds() -> None:
    admissions = _run([0.0] * 21 + [2.9, 3.0], limit=DEFAULT_REJECTION_LIMIT)
    assert [a.answer for a in admissions] == [True] * 20 + [False, False, True]


@pytest.mark.parametrize(
    "fields", [{"burst": 0, "per_minute": 1.0}, {"burst": 1, "per_minute": 0.0},
               {"burst": 1, "per_minute": 1.0, "report_interval_seconds": 0.0}],
)  # fmt: skip
def test_a_limit_that_answers_nothing_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="rejection limit"):
        RejectionLimit(**fields)  # type: ignore[arg-type]
