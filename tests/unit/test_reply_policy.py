"""Reply policy: ready expedites, postpone is capped, register is capped, every refusal has its code."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from evacuator.hypervisor.facts import VmFacts
from evacuator.incident.reply_policy import (
    Decision,
    Expedite,
    NewDeadline,
    PendingEvacuation,
    Reject,
    RejectCode,
    ReplyKind,
    ReplyPolicy,
    ReplyRequest,
    StoreWindow,
    decide_reply,
)
from monitors.verdicts import Severity
from notifiers.wire import WireRejectCode

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
OTHER_VM = "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12"
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
OLD_EVENT = "7d1b3a5f-1e6c-4c8f-9a4b-3c2d0e9f8a71"
POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=3600, max_window_seconds=3600)
ACME = VmFacts(tenant="acme", window_seconds=600)


def pending(
    *, severity: Severity = Severity.SEVERE, deadline_s: int = 600, planned_s: int = 600
) -> PendingEvacuation:
    return PendingEvacuation(
        event_id=EVENT, severity=severity, opened_at=T0,
        planned_deadline=T0 + timedelta(seconds=planned_s), deadline=T0 + timedelta(seconds=deadline_s),
    )  # fmt: skip


def request(kind: ReplyKind, seconds: int | None = None, **changes: object) -> ReplyRequest:
    fields: dict[str, object] = {"tenant": "acme", "vm_uuid": VM, "kind": kind, "event_id": EVENT}
    return ReplyRequest(**{**fields, "seconds": seconds, **changes})  # type: ignore[arg-type]


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


CASES: list[tuple[str, ReplyRequest, VmFacts | None, PendingEvacuation | None, Decision]] = [
    ("ready_expedites", request(ReplyKind.READY), ACME, pending(), Expedite(vm_uuid=VM)),
    ("ready_without_event_id", request(ReplyKind.READY, event_id=None), ACME, pending(),
     Expedite(vm_uuid=VM)),
    (
        "postpone_within_cap", request(ReplyKind.POSTPONE, 300), ACME, pending(),
        NewDeadline(vm_uuid=VM, deadline=at(900), requested_seconds=300, granted_seconds=300),
    ),
    (
        "postpone_beyond_cap_is_cut_to_the_cap", request(ReplyKind.POSTPONE, 5000), ACME, pending(),
        NewDeadline(vm_uuid=VM, deadline=at(2400), requested_seconds=5000, granted_seconds=1800),
    ),
    (
        "second_postpone_gets_what_is_left", request(ReplyKind.POSTPONE, 1000), ACME,
        pending(deadline_s=2000),
        NewDeadline(vm_uuid=VM, deadline=at(2400), requested_seconds=1000, granted_seconds=400),
    ),
    (
        "severity_hard_limit_beats_the_postpone_cap", request(ReplyKind.POSTPONE, 1800), ACME,
        pending(planned_s=3000, deadline_s=3000),
        NewDeadline(vm_uuid=VM, deadline=at(3600), requested_seconds=1800, granted_seconds=600),
    ),
    (
        "postpone_at_the_cap_is_refused", request(ReplyKind.POSTPONE, 60), ACME, pending(deadline_s=2400),
        Reject(code=RejectCode.POSTPONE_LIMIT_REACHED, reason="no postpone past 2026-11-25T04:40:00+00:00",
               vm_uuid=VM),
    ),
    (
        "failed_host_allows_no_postpone", request(ReplyKind.POSTPONE, 60), ACME,
        pending(severity=Severity.FAILED, deadline_s=1, planned_s=1),
        Reject(code=RejectCode.NO_POSTPONE_ON_FAILED_HOST, reason="the host has failed", vm_uuid=VM),
    ),
    (
        "register_stores_the_window", request(ReplyKind.REGISTER, 900), ACME, None,
        StoreWindow(vm_uuid=VM, window_seconds=900, requested_seconds=900),
    ),
    (
        "register_is_capped_by_the_admin_maximum", request(ReplyKind.REGISTER, 86400), ACME, pending(),
        StoreWindow(vm_uuid=VM, window_seconds=3600, requested_seconds=86400),
    ),
    (
        "unknown_vm", request(ReplyKind.READY, vm_uuid=OTHER_VM), None, None,
        Reject(code=RejectCode.UNKNOWN_VM, reason="no such VM on this host", vm_uuid=OTHER_VM),
    ),
    (
        "wrong_owner", request(ReplyKind.READY, tenant="mallory"), ACME, pending(),
        Reject(code=RejectCode.NOT_OWNER, reason="the VM belongs to another tenant", vm_uuid=VM),
    ),
    (
        "wrong_owner_cannot_register", request(ReplyKind.REGISTER, 60, tenant="mallory"), ACME, None,
        Reject(code=RejectCode.NOT_OWNER, reason="the VM belongs to another tenant", vm_uuid=VM),
    ),
    (
        "vm_without_owner_takes_no_replies", request(ReplyKind.READY), VmFacts(), pending(),
        Reject(code=RejectCode.NOT_OWNER, reason="the VM belongs to another tenant", vm_uuid=VM),
    ),
    (
        "nothing_pending", request(ReplyKind.READY), ACME, None,
        Reject(code=RejectCode.NO_PENDING_EVACUATION, reason="no evacuation of this VM is pending",
               vm_uuid=VM),
    ),
    (
        "expired_event", request(ReplyKind.POSTPONE, 60, event_id=OLD_EVENT), ACME, pending(),
        Reject(code=RejectCode.STALE_EVENT, reason=f"event {OLD_EVENT} is not the pending evacuation {EVENT}",
               vm_uuid=VM),
    ),
    (
        "deadline_passed", request(ReplyKind.POSTPONE, 60), ACME, pending(deadline_s=0, planned_s=0),
        Reject(code=RejectCode.DEADLINE_PASSED, reason="the VM's deadline has passed: it is moving",
               vm_uuid=VM),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "vm", "pending_", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_reply_decision(
    request_: ReplyRequest, vm: VmFacts | None, pending_: PendingEvacuation | None, expected: Decision
) -> None:
    assert decide_reply(request_, vm=vm, pending=pending_, now=T0, policy=POLICY) == expected


def test_another_tenants_vm_looks_unknown_to_the_tenant() -> None:
    assert RejectCode.NOT_OWNER.for_tenant is WireRejectCode.UNKNOWN_VM
    assert RejectCode.STALE_EVENT.for_tenant is WireRejectCode.STALE_EVENT


@pytest.mark.parametrize("code", list(RejectCode))
def test_every_code_the_tenant_is_told_is_a_code_of_the_contract(code: RejectCode) -> None:
    assert isinstance(code.for_tenant, WireRejectCode)
    assert code is RejectCode.NOT_OWNER or code.for_tenant.value == code.value


def test_every_code_of_the_contract_is_one_the_service_can_give() -> None:
    assert {code.for_tenant for code in RejectCode} == set(WireRejectCode)


def test_the_policy_imports_no_broker_libvirt_or_scheduler() -> None:
    probe = (
        "import sys, evacuator.incident.reply_policy; "
        "sys.exit(sorted({'pika', 'libvirt', 'apscheduler', 'sqlite3'} & set(sys.modules)) or None)"
    )
    result = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
