"""ReplyDesk over fakes: each decision is carried out through its port (window closed or moved, window stored)
or sent back, and deliveries take the consumer's route into it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmState
from evacuator.incident.ledger import LedgerVm
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.reply_limit import DEFAULT_REJECTION_LIMIT, RejectionLimit
from evacuator.incident.reply_policy import RejectCode, ReplyPolicy
from evacuator.lab.vms import domain_xml
from monitors.verdicts import Severity
from notifiers.messages import PostponeReply, ReadyReply, RegisterReply, Reply
from notifiers.reply_acceptance import RejectedDelivery, TenantReply, route_delivery
from notifiers.wire import WireRejectCode
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.incidents import opened
from tests.fakes.notifier import RecordingNotifier
from tests.fakes.windows import FakeWindows, RecordingWindowStore

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
OLD_EVENT = "7d1b3a5f-1e6c-4c8f-9a4b-3c2d0e9f8a71"
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=3600, max_window_seconds=3600)
DEADLINE = T0 + timedelta(seconds=600)
LATEST = T0 + timedelta(seconds=2400)


class Desk:
    def __init__(
        self, severity: Severity = Severity.SEVERE, *, limit: RejectionLimit = DEFAULT_REJECTION_LIMIT
    ) -> None:
        self.now = T0
        self.hypervisor = FakeHypervisor(name="hv1")
        xml = domain_xml(name="web", pool="p", volume="web.raw", mac="52:54:00:00:00:01", uuid=VM,
                         facts=VmFacts(tenant="acme", window_seconds=600))  # fmt: skip
        self.hypervisor.add_vm(xml, state=VmState.RUNNING)
        self.windows = FakeWindows()
        self.windows.open(VM, DEADLINE)
        latest = None if severity is Severity.FAILED else LATEST
        self.ledger = opened([LedgerVm(vm_uuid=VM, vm_name="web", tenant="acme", deadline=DEADLINE,
                                       latest_deadline=latest)],
                             {"acme": EVENT}, severity=severity, opened_at=T0)  # fmt: skip
        self.notifier = RecordingNotifier(clock=lambda: T0)
        self.store = RecordingWindowStore()
        self.desk = ReplyDesk(
            hypervisor=self.hypervisor, windows=self.windows, ledger=self.ledger, notifier=self.notifier,
            window_store=self.store, policy=POLICY, clock=lambda: self.now, rejection_limit=limit,
        )  # fmt: skip

    def reply(self, reply: Reply, tenant: str = "acme", *, broadcast: bool = False) -> None:
        self.desk.on_reply(TenantReply(tenant=tenant, host="hv1", reply=reply, message_id="m1",
                                       broadcast=broadcast))

    def deliver(
        self, body: bytes, *, user_id: str | None = "acme", routing_key: str = "acme.hv1"
    ) -> TenantReply | RejectedDelivery:
        """As ReplyConsumer hands a delivery on: routed first, then to the desk's matching handler."""
        routed = route_delivery(
            host="hv1", user_id=user_id, routing_key=routing_key, body=body, message_id="m1"
        )
        if isinstance(routed, RejectedDelivery):
            self.desk.on_rejected(routed)
        else:
            self.desk.on_reply(routed)
        return routed

    def untouched(self) -> bool:
        """Nothing was acted upon: the window is as planned and no window was stored."""
        windows = self.windows
        return (windows.deadlines, windows.expedited, windows.postponed, self.store.stored) == (
            {VM: DEADLINE}, [], [], []
        )

    def sent(self) -> list[tuple[str, str, object]]:
        return [(kind, tenant, details.get("code")) for kind, tenant, details in self.notifier.sent]


def test_ready_closes_the_window_now_and_tells_the_tenant() -> None:
    desk = Desk()
    with capture_logs() as logs:
        desk.reply(ReadyReply(vm_uuid=VM, event_id=EVENT))
    assert desk.windows.expedited == [VM] and desk.windows.deadlines == {}
    assert {"event": "tenant_ready", "tenant": "acme", "vm_uuid": VM, "log_level": "info"} in logs
    [(kind, tenant, details)] = desk.notifier.sent
    assert (kind, tenant, details["cause"]) == ("evacuation_updated", "acme", "expedited")
    [vm] = details["vms"]  # type: ignore[misc]
    assert (vm.vm_uuid, vm.deadline, vm.latest_deadline) == (VM, T0, LATEST)


def test_postpone_moves_the_window_and_tells_the_tenant_the_new_deadline() -> None:
    desk = Desk()
    desk.reply(PostponeReply(vm_uuid=VM, postpone_seconds=300, event_id=EVENT))
    assert desk.windows.postponed == [(VM, T0 + timedelta(seconds=900))]
    kind, tenant, details = desk.notifier.sent[0]
    assert (kind, tenant, details["cause"]) == ("evacuation_updated", "acme", "postponed")
    [vm] = details["vms"]  # type: ignore[misc]
    assert (vm.deadline, vm.latest_deadline) == (T0 + timedelta(seconds=900), LATEST), \
        "the latest deadline is told again, unchanged"


def test_postpone_beyond_the_cap_gets_the_cap() -> None:
    desk = Desk()
    desk.reply(PostponeReply(vm_uuid=VM, postpone_seconds=99_999))
    assert desk.windows.deadlines == {VM: T0 + timedelta(seconds=2400)}


def test_register_stores_the_capped_window() -> None:
    desk = Desk()
    desk.reply(RegisterReply(vm_uuid=VM, window_seconds=86_400))
    assert desk.store.stored == [(VM, 3600)]
    assert desk.notifier.sent == []


def test_a_window_the_host_cannot_store_is_refused_so_the_tenant_may_retry() -> None:
    desk = Desk()
    desk.store.inject_error(HypervisorError("host hv1: store_window failed"))
    with capture_logs() as logs:
        desk.reply(RegisterReply(vm_uuid=VM, window_seconds=900))
    assert desk.sent() == [("reply_rejected", "acme", "refused_reply")]
    assert "try again" in str(desk.notifier.sent[0][2]["reason"])
    assert [e["event"] for e in logs] == ["window_not_stored", "reply_refused"]


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
    assert desk.untouched()


def test_failed_host_refuses_postpone() -> None:
    desk = Desk(severity=Severity.FAILED)
    desk.reply(PostponeReply(vm_uuid=VM, postpone_seconds=60))
    assert desk.notifier.sent[0][2]["code"] == "no_postpone_on_failed_host"
    assert desk.untouched()


@pytest.mark.parametrize(
    "reply",
    [ReadyReply(vm_uuid=VM, event_id=EVENT), PostponeReply(vm_uuid=VM, postpone_seconds=60, event_id=EVENT)],
    ids=["ready", "postpone"],
)
def test_a_window_that_closed_since_the_desk_looked_is_no_longer_pending(reply: Reply) -> None:
    desk = Desk()
    desk.windows.close_behind(VM)  # the timer fires between the policy's look and the desk's change
    desk.reply(reply)
    assert desk.sent() == [("reply_rejected", "acme", "no_pending_evacuation")]
    assert (desk.windows.expedited, desk.windows.postponed, desk.windows.deadlines) == ([], [], {})


def test_a_delivery_refused_before_parsing_is_answered_to_whom_the_broker_vouches_for() -> None:
    desk = Desk()
    desk.desk.on_rejected(RejectedDelivery(reason="x", user_id=None, routing_key="acme.all", message_id=None))
    desk.desk.on_rejected(
        RejectedDelivery(reason="body is not UTF-8 JSON", user_id="acme", routing_key="acme.hv1",
                         message_id="m9", code=WireRejectCode.MALFORMED_REPLY, answer_to="acme")
    )  # fmt: skip
    assert desk.sent() == [("reply_rejected", "acme", "malformed_reply")]


# --- Deliveries, routed as the consumer routes them -------------------------------------------------------


def _body(**fields: object) -> bytes:
    return json.dumps({"schema_version": 1, "type": "postpone", "vm_uuid": VM, **fields}).encode()


@pytest.mark.parametrize(
    ("body", "user_id", "routing_key", "code", "reason"),
    [
        (_body(postpone_seconds=60), None, "acme.hv1", RejectCode.MISSING_USER_ID, "missing user_id"),
        (_body(postpone_seconds=60), "acme", "acme.hv2", RejectCode.WRONG_ROUTING_KEY, "is not 'acme.hv1'"),
        (b"\x00garbage", "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "not UTF-8 JSON"),
        (b"[]", "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "JSON list"),
        (b"{}", "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "schema_version is missing"),
        (_body(schema_version=2), "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "schema_version is 2"),
        (_body(type="reboot"), "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "type is 'reboot'"),
        (_body(), "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "postpone_seconds: Field required"),
        (_body(postpone_seconds="60"), "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "valid integer"),
        (_body(postpone_seconds=-5), "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "greater than"),
        (_body(postpone_seconds=60, vm_uuid="w"), "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "vm_uuid"),
        (_body(postpone_seconds=60, sudo=1), "acme", "acme.hv1", RejectCode.MALFORMED_REPLY, "sudo: Extra"),
        (_body(postpone_seconds=60), "mallory", "mallory.hv1", RejectCode.NOT_OWNER, "another tenant"),
    ],
    ids=[
        "no_user_id", "other_host", "binary", "array", "empty_object", "future_schema", "unknown_type",
        "missing_field", "string_number", "negative", "bad_uuid", "extra_field", "wrong_owner",
    ],
)  # fmt: skip
def test_every_bad_delivery_is_a_documented_rejection(
    body: bytes, user_id: str | None, routing_key: str, code: RejectCode, reason: str
) -> None:
    desk = Desk()
    with capture_logs() as logs:
        routed = desk.deliver(body, user_id=user_id, routing_key=routing_key)
    if isinstance(routed, RejectedDelivery):  # refused by the acceptance rules, before the desk
        refused_code, detail = routed.code, routed.reason
    else:  # refused by the desk's policy
        [refusal] = [e for e in logs if e["event"] == "reply_refused"]
        refused_code, detail = refusal["reason"], refusal["detail"]
    assert RejectCode(refused_code) is code and reason in detail
    # The sender hears the code meant for tenants, the one the routing key names without a user_id (the
    # broker lets only that tenant publish `acme.hv1`); nothing is done.
    assert desk.sent() == [("reply_rejected", user_id or "acme", code.for_tenant)]
    assert desk.untouched()


def test_a_good_delivery_goes_all_the_way_to_a_new_deadline() -> None:
    desk = Desk()
    desk.deliver(_body(postpone_seconds=60, event_id=EVENT))
    assert desk.windows.postponed == [(VM, T0 + timedelta(seconds=660))]
    assert desk.sent() == [("evacuation_updated", "acme", None)]


# --- Replies routed to every host (`<tenant>.all`): registering without knowing the host ----------------


def test_a_register_to_every_host_is_stored_by_the_host_holding_the_vm() -> None:
    desk = Desk()
    routed = desk.deliver(json.dumps({"schema_version": 1, "type": "register", "vm_uuid": VM,
                                      "window_seconds": 900}).encode(), routing_key="acme.all")
    assert isinstance(routed, TenantReply) and routed.broadcast
    assert desk.store.stored == [(VM, 900)] and desk.sent() == []


@pytest.mark.parametrize(
    ("tenant", "vm_uuid"), [("mallory", VM), ("acme", "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12")],
    ids=["another_tenants_vm", "a_vm_elsewhere"],
)
def test_a_register_to_every_host_is_ignored_silently_by_the_other_hosts(tenant: str, vm_uuid: str) -> None:
    desk = Desk()
    with capture_logs() as logs:
        desk.reply(RegisterReply(vm_uuid=vm_uuid, window_seconds=900), tenant=tenant, broadcast=True)
    assert desk.sent() == [] and desk.untouched()
    assert [e["event"] for e in logs] == ["reply_not_for_this_host"]


def test_only_a_register_may_go_to_every_host() -> None:
    desk = Desk()
    desk.reply(ReadyReply(vm_uuid=VM, event_id=EVENT), broadcast=True)
    assert desk.sent() == [("reply_rejected", "acme", "wrong_routing_key")] and desk.untouched()
    assert "acme.hv1" in str(desk.notifier.sent[0][2]["reason"])


def test_a_refused_delivery_to_every_host_is_answered_by_none() -> None:
    desk = Desk()
    desk.deliver(b"not json", routing_key="acme.all")
    assert desk.sent() == []


# --- A flood of bad replies: refusals answered up to the limit, the rest counted ------------------------

LIMIT = RejectionLimit(burst=3, per_minute=6.0, report_interval_seconds=60.0)


def _flood(desk: Desk, count: int, *, user_id: str = "acme", routing_key: str = "acme.hv1") -> None:
    for _ in range(count):
        desk.deliver(b"not json", user_id=user_id, routing_key=routing_key)


def _suppressed(logs: Sequence[Mapping[str, object]]) -> list[tuple[object, object]]:
    return [(e["tenant"], e["suppressed"]) for e in logs if e["event"] == "reply_rejections_suppressed"]


def test_refusals_past_the_limit_are_counted_and_reported_not_sent() -> None:
    desk = Desk(limit=LIMIT)
    with capture_logs() as logs:
        _flood(desk, 1000)
        desk.now = T0 + timedelta(seconds=30)
        _flood(desk, 1000)
        desk.now = T0 + timedelta(seconds=60)
        _flood(desk, 1)
    # The burst at once, then one a 10 s (6 a minute): at 30 s three more, at 60 s three more.
    assert desk.sent() == [("reply_rejected", "acme", "malformed_reply")] * (3 + 3 + 1)
    # The first one held back is reported at once, the rest together once the interval is over.
    assert _suppressed(logs) == [("acme", 1), ("acme", 2001 - 7 - 1)]
    assert sum(e["event"] == "reply_rejected" for e in logs) == 7, "the journal is spared too"
    assert desk.untouched()


def test_refusals_by_the_desks_policy_count_against_the_same_limit() -> None:
    desk = Desk(limit=LIMIT)
    with capture_logs() as logs:
        for _ in range(5):
            desk.reply(ReadyReply(vm_uuid="1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12"))
        _flood(desk, 5)
    assert desk.sent() == [("reply_rejected", "acme", "unknown_vm")] * 3
    assert sum(e["event"] == "reply_refused" for e in logs) == 3
    assert _suppressed(logs) == [("acme", 1)]


def test_one_tenants_flood_leaves_another_tenant_answered() -> None:
    desk = Desk(limit=LIMIT)
    _flood(desk, 500, user_id="mallory", routing_key="mallory.hv1")
    _flood(desk, 1)
    assert desk.sent()[-1] == ("reply_rejected", "acme", "malformed_reply")
    assert [tenant for _, tenant, _ in desk.sent()] == ["mallory"] * 3 + ["acme"]


def test_refusals_answered_to_nobody_are_limited_in_the_log_by_their_publisher() -> None:
    desk = Desk(limit=LIMIT)
    with capture_logs() as logs:
        _flood(desk, 500, routing_key="acme.all")  # routed to every host: nobody is answered
    assert desk.sent() == []
    assert sum(e["event"] == "reply_rejected" for e in logs) == 3
    assert _suppressed(logs) == [("acme", 1)]


def test_the_default_limit_answers_a_burst_of_twenty() -> None:
    desk = Desk()
    _flood(desk, 25)
    assert len(desk.sent()) == DEFAULT_REJECTION_LIMIT.burst == 20
