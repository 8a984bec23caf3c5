"""ReplyDesk over fakes: each decision is applied (timer fired or moved, window stored) or sent back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmState
from evacuator.incident.planner import PlannedMove
from evacuator.incident.reply_desk import ReplyDesk, ScheduledLedger
from evacuator.incident.reply_policy import ReplyPolicy
from evacuator.lab.vms import domain_xml
from monitors.verdicts import Severity
from notifiers.messages import PostponeReply, ReadyReply, RegisterReply, Reply
from notifiers.replies import RejectedDelivery, TenantReply
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.notifier import RecordingNotifier
from tests.fakes.timers import ManualTimers

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
OLD_EVENT = "7d1b3a5f-1e6c-4c8f-9a4b-3c2d0e9f8a71"
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=3600, max_window_seconds=3600)


class Desk:
    def __init__(self, severity: Severity = Severity.SEVERE) -> None:
        self.hypervisor = FakeHypervisor(name="hv1")
        xml = domain_xml(name="web", pool="p", volume="web.raw", mac="52:54:00:00:00:01", uuid=VM,
                         facts=VmFacts(tenant="acme", window_seconds=600))  # fmt: skip
        self.hypervisor.add_vm(xml, state=VmState.RUNNING)
        self.timers = ManualTimers()
        self.timers.schedule(VM, T0 + timedelta(seconds=600))
        self.ledger = ScheduledLedger()
        move = PlannedMove(vm_uuid=VM, vm_name="web", tenant="acme", window_seconds=600,
                           deadline=T0 + timedelta(seconds=600))  # fmt: skip
        self.ledger.record(event_id=EVENT, tenant="acme", severity=severity, opened_at=T0, moves=(move,))
        self.notifier = RecordingNotifier(clock=lambda: T0)
        self.expedited: list[tuple[str, str]] = []
        self.windows: list[tuple[str, int]] = []
        self.desk = ReplyDesk(
            hypervisor=self.hypervisor, timers=self.timers, ledger=self.ledger, notifier=self.notifier,
            expedite=self.expedite, store_window=lambda vm, s: self.windows.append((vm, s)), policy=POLICY,
            clock=lambda: T0,
        )  # fmt: skip

    def expedite(self, tenant: str, vm_uuid: str) -> str | None:
        self.expedited.append((tenant, vm_uuid))
        return None if self.timers.fire_now(vm_uuid) else "no_pending_evacuation"

    def reply(self, reply: Reply, tenant: str = "acme") -> None:
        self.desk.on_reply(TenantReply(tenant=tenant, host="hv1", reply=reply, message_id="m1"))


def test_ready_fires_the_vms_timer() -> None:
    desk = Desk()
    desk.reply(ReadyReply(vm_uuid=VM, event_id=EVENT))
    assert desk.expedited == [("acme", VM)] and desk.timers.fired == [VM]
    assert desk.notifier.sent == []


def test_postpone_moves_the_timer_and_tells_the_tenant_the_new_deadline() -> None:
    desk = Desk()
    desk.reply(PostponeReply(vm_uuid=VM, postpone_seconds=300, event_id=EVENT))
    assert desk.timers.pending() == {VM: T0 + timedelta(seconds=900)}
    kind, tenant, details = desk.notifier.sent[0]
    assert (kind, tenant, details["cause"]) == ("evacuation_updated", "acme", "postponed")
    assert details["moves"][0].deadline == T0 + timedelta(seconds=900)  # type: ignore[index]


def test_postpone_beyond_the_cap_gets_the_cap() -> None:
    desk = Desk()
    desk.reply(PostponeReply(vm_uuid=VM, postpone_seconds=99_999))
    assert desk.timers.pending() == {VM: T0 + timedelta(seconds=2400)}


def test_register_stores_the_capped_window() -> None:
    desk = Desk()
    desk.reply(RegisterReply(vm_uuid=VM, window_seconds=86_400))
    assert desk.windows == [(VM, 3600)]


@pytest.mark.parametrize(
    ("reply", "tenant", "code", "reason"),
    [
        (PostponeReply(vm_uuid=VM, postpone_seconds=60), "mallory", "unknown_vm", "no such VM on this host"),
        (ReadyReply(vm_uuid="1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12"), "acme", "unknown_vm", "no such VM"),
        (ReadyReply(vm_uuid=VM, event_id=OLD_EVENT), "acme", "stale_event", "not"),
    ],
    ids=["other_tenants_vm_looks_unknown", "unknown_vm", "expired_event"],
)
def test_refusals_go_back_to_the_sender(reply: Reply, tenant: str, code: str, reason: str) -> None:
    desk = Desk()
    desk.reply(reply, tenant=tenant)
    kind, to, details = desk.notifier.sent[0]
    assert (kind, to, details["code"]) == ("reply_rejected", tenant, code)
    assert reason in str(details["reason"])
    assert desk.timers.pending() == {VM: T0 + timedelta(seconds=600)} and desk.expedited == []


def test_failed_host_refuses_postpone() -> None:
    desk = Desk(severity=Severity.FAILED)
    desk.reply(PostponeReply(vm_uuid=VM, postpone_seconds=60))
    assert desk.notifier.sent[0][2]["code"] == "no_postpone_on_failed_host"


def test_a_delivery_refused_before_parsing_is_answered_only_to_a_vouched_sender() -> None:
    desk = Desk()
    desk.desk.on_rejected(RejectedDelivery(reason="x", user_id=None, routing_key="acme.hv1", message_id=None))
    desk.desk.on_rejected(
        RejectedDelivery(reason="body is not UTF-8 JSON", user_id="acme", routing_key="acme.hv1",
                         message_id="m9", code="malformed_reply")
    )  # fmt: skip
    sent = [(k, t, d["code"]) for k, t, d in desk.notifier.sent]
    assert sent == [("reply_rejected", "acme", "malformed_reply")]
