"""The scheduled notice offers the replies the service answers, and how far each VM may be postponed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from evacuator.incident.notices import scheduled_notice
from evacuator.incident.planner import PlannedMove
from evacuator.incident.reply_policy import ReplyPolicy
from monitors.verdicts import HostVerdict, Reason, Severity
from notifiers.messages import EvacuationScheduled

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=3600, max_window_seconds=3600)
MOVE = PlannedMove(
    vm_uuid=VM, vm_name="web", tenant="acme", window_seconds=600, deadline=T0 + timedelta(minutes=10)
)
HOT = Reason(source="hwmon", sensor="t", value=97.0, threshold=90.0, unit="celsius", message="hot")


def notice(severity: Severity, policy: ReplyPolicy | None) -> EvacuationScheduled:
    verdict = HostVerdict(severity=severity, reasons=(HOT,), at=T0)
    return scheduled_notice(
        host="hv1", tenant="acme", verdict=verdict, moves=(MOVE,), replies_exchange="evacuator.replies",
        reply_policy=policy, now=T0,
    )  # fmt: skip


def test_without_a_reply_policy_only_ready_is_offered() -> None:
    scheduled = notice(Severity.SEVERE, None)
    assert scheduled.allowed_replies == ("ready",) and scheduled.vms[0].latest_deadline is None


def test_a_severe_host_offers_postpone_up_to_the_cap() -> None:
    scheduled = notice(Severity.SEVERE, POLICY)
    assert scheduled.allowed_replies == ("ready", "postpone", "register")
    assert scheduled.vms[0].latest_deadline == T0 + timedelta(minutes=40)


def test_a_failed_host_offers_no_postpone() -> None:
    scheduled = notice(Severity.FAILED, POLICY)
    assert scheduled.allowed_replies == ("ready", "register") and scheduled.vms[0].latest_deadline is None
