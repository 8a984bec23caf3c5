"""The scheduled notice offers the replies the service answers, with each VM's deadlines from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evacuator.incident.ledger import Incident, LedgerVm
from evacuator.incident.notices import scheduled_notice
from monitors.verdicts import Reason, Severity
from notifiers.messages import EvacuationScheduled
from tests.fakes.incidents import opened

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
HOT = Reason(source="hwmon", sensor="t", value=97.0, threshold=90.0, unit="celsius", message="hot")


def notice(severity: Severity, answers_replies: bool, latest: datetime | None) -> EvacuationScheduled:
    vm = LedgerVm(vm_uuid=VM, vm_name="web", tenant="acme", deadline=T0 + timedelta(minutes=10),
                  latest_deadline=latest)
    ledger = opened([vm], {"acme": EVENT}, severity=severity, opened_at=T0)
    incident = ledger.open_incident()
    assert incident is not None
    return scheduled_notice(
        host="hv1", tenant="acme", event_id=EVENT, incident=incident,
        vms=ledger.records(incident.incident_id), replies_exchange="evacuator.replies",
        answers_replies=answers_replies,
    )  # fmt: skip


def test_without_the_reply_desk_only_ready_is_offered() -> None:
    assert notice(Severity.SEVERE, False, None).allowed_replies == ("ready",)


def test_a_severe_host_offers_postpone_up_to_the_vms_latest_deadline() -> None:
    scheduled = notice(Severity.SEVERE, True, T0 + timedelta(minutes=40))
    assert scheduled.allowed_replies == ("ready", "postpone", "register")
    assert scheduled.event_id == EVENT and scheduled.vms[0].deadline == T0 + timedelta(minutes=10)
    assert scheduled.vms[0].latest_deadline == T0 + timedelta(minutes=40)
    assert [r.message for r in scheduled.reasons] == ["hot"]


def test_a_failed_host_offers_no_postpone() -> None:
    scheduled = notice(Severity.FAILED, True, None)
    assert scheduled.allowed_replies == ("ready", "register") and scheduled.vms[0].latest_deadline is None


@pytest.mark.parametrize("severity", [Severity.HEALTHY, Severity.UNKNOWN])
def test_no_scheduled_notice_for_a_host_that_is_not_sick(severity: Severity) -> None:
    incident = Incident(incident_id="i", severity=severity, reasons=(HOT,), opened_at=T0)
    with pytest.raises(ValueError, match="no evacuation notice"):
        scheduled_notice(host="hv1", tenant="acme", event_id=EVENT, incident=incident, vms=(),
                         replies_exchange="evacuator.replies", answers_replies=True)  # fmt: skip
