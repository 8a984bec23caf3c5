"""Fuzz: 10,000 random deliveries down the path production runs (the consumer's routing, then a real ReplyDesk
over fakes); nothing crashes, only documented refusals come out, and only the owner's replies act."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.hypervisor.facts import VmFacts
from evacuator.incident.ledger import LedgerVm
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.reply_policy import RejectCode, ReplyPolicy
from evacuator.lab.vms import domain_xml
from monitors.verdicts import Severity
from notifiers.messages import PostponeReply, ReadyReply, RegisterReply, Reply
from notifiers.reply_acceptance import RejectedDelivery, TenantReply, route_delivery
from notifiers.topology import is_word
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.incidents import opened
from tests.fakes.notifier import RecordingNotifier
from tests.fakes.windows import FakeWindows, RecordingWindowStore

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VMS = ("0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01", "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12")
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
OTHER_EVENT = "7d1b3a5f-1e6c-4c8f-9a4b-3c2d0e9f8a71"
POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=3600, max_window_seconds=3600)
TENANTS = ("acme", "bravo", "", "acme.hv1", "Acme", "ACME", "a" * 300)
FACTS = {VMS[0]: VmFacts(tenant="acme", window_seconds=60), VMS[1]: VmFacts(tenant="bravo")}
EXAMPLES = 10_000
# Every event the desk may log; another name would be a change of the operators' vocabulary.
DESK_EVENTS = frozenset({
    "reply_rejected", "reply_refused", "reply_rejection_not_sent", "tenant_ready", "tenant_postponed",
    "tenant_window_registered", "window_not_stored", "reply_not_for_this_host",
})


def _host() -> FakeHypervisor:
    host = FakeHypervisor(name="hv1")
    for number, (vm_uuid, facts) in enumerate(FACTS.items()):
        host.add_vm(domain_xml(name=f"vm{number}", pool="p", volume=f"vm{number}.raw",
                               mac=f"52:54:00:00:00:0{number}", uuid=vm_uuid, facts=facts))  # fmt: skip
    return host


HOST = _host()  # the desk only looks VMs up: one host serves every example

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """A draw from `good` four times in five: hypothesis's one_of and sampled_from do not weight branches."""
    return draw(good) if draw(st.integers(0, 4)) > 0 else draw(bad)


_any_seconds = st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8) | st.none() | _json
_any_uuid = st.uuids().map(str) | st.text(max_size=40) | st.integers() | _json


@st.composite
def _reply_document(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-shaped replies with random values, so the policy itself gets fuzzed too."""
    document: dict[str, Any] = {
        "schema_version": _mostly(draw, st.just(1), st.sampled_from([2, 0, "1", True, None, 1.0, []])),
        "type": _mostly(draw, st.sampled_from(["ready", "postpone", "register"]), st.text(max_size=10)),
        "vm_uuid": _mostly(draw, st.sampled_from(VMS), _any_uuid),
    }
    kind = document["type"]
    rarely = draw(st.integers(0, 5)) == 0  # now and then the fields of another type, or none
    if (kind in ("ready", "postpone")) != rarely and draw(st.booleans()):
        document["event_id"] = _mostly(draw, st.sampled_from([EVENT, None]), _any_uuid)
    if (kind == "postpone") != rarely:
        document["postpone_seconds"] = _mostly(draw, st.integers(0, 10_000), _any_seconds)
    if (kind == "register") != rarely:
        document["window_seconds"] = _mostly(draw, st.integers(0, 10_000), _any_seconds)
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.text(max_size=8))] = draw(_json)
    if draw(st.integers(0, 9)) == 0:
        for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=2)):
            document.pop(key, None)
    return document


@st.composite
def _sender(draw: st.DrawFn) -> tuple[str | None, str]:
    """(user_id, routing_key): mostly a real tenant on its own key, else anything."""
    if draw(st.integers(0, 4)) > 0:
        user = draw(st.sampled_from(["acme", "bravo"]))
        return user, f"{user}.{draw(st.sampled_from(['hv1', 'hv1', 'hv1', 'all']))}"
    user_id = draw(st.none() | st.sampled_from(TENANTS) | st.text(max_size=20))
    routing_key = draw(st.sampled_from(["acme.hv1", "bravo.hv1", "acme.hv2", "", "#", "acme.hv1.x",
                                         "acme.all", "bravo.all"]))
    return user_id, draw(st.just(routing_key) | st.text(max_size=20))


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    """Reply documents mostly; else random bytes or any JSON value."""
    noise = st.binary(max_size=256) | _json.map(lambda value: json.dumps(value).encode())
    return _mostly(draw, _reply_document().map(lambda document: json.dumps(document).encode()), noise)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    """One VM's evacuation as the desk may find it: in the open incident (`told`) or not, its window open or
    not. The incident's severity and each tenant's event id are drawn apart (`Incident`)."""

    told: bool
    planned_deadline: datetime
    deadline: datetime | None
    closes_behind: bool  # its timer fires between the desk's look and its change


def _seconds(low: int, high: int) -> st.SearchStrategy[datetime]:
    return st.integers(low, high).map(lambda s: T0 + timedelta(seconds=s))


@st.composite
def _planned(draw: st.DrawFn) -> Planned | None:
    if draw(st.integers(0, 4)) == 0:
        return None
    return Planned(
        told=draw(st.integers(0, 9)) > 0,
        planned_deadline=draw(_seconds(-100, 4000)),
        deadline=_mostly(draw, _seconds(-100, 8000), st.none()),
        closes_behind=draw(st.integers(0, 9)) == 0,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    """The open incident: how sick the host is, and the event id each tenant was told."""

    severity: Severity
    event_ids: dict[str, str]


_incident = st.builds(
    Incident, severity=st.sampled_from(list(Severity)),
    event_ids=st.fixed_dictionaries({"acme": st.sampled_from([EVENT, OTHER_EVENT]),
                                     "bravo": st.sampled_from([EVENT, OTHER_EVENT])}),
)  # fmt: skip


@dataclass(slots=True)
class World:
    """A real ReplyDesk over fakes of its ports, set up as one random incident left them."""

    windows: FakeWindows
    store: RecordingWindowStore
    notifier: RecordingNotifier
    desk: ReplyDesk


def _world(incident: Incident, plans: dict[str, Planned | None], store_fails: bool) -> World:
    windows, store = FakeWindows(), RecordingWindowStore()
    told = [LedgerVm(vm_uuid=vm_uuid, vm_name="vm", tenant=FACTS[vm_uuid].tenant,
                     deadline=plan.planned_deadline, latest_deadline=LATEST)
            for vm_uuid, plan in plans.items() if plan is not None and plan.told]  # fmt: skip
    ledger = opened(told, incident.event_ids, severity=incident.severity, opened_at=T0)
    for vm_uuid, plan in plans.items():
        if plan is None:
            continue
        if plan.deadline is not None:
            windows.open(vm_uuid, plan.deadline)
        if plan.closes_behind:
            windows.close_behind(vm_uuid)
    if store_fails:
        store.inject_error(HypervisorError("host hv1: store_window failed"))
    notifier = RecordingNotifier(clock=lambda: T0)
    desk = ReplyDesk(hypervisor=HOST, windows=windows, ledger=ledger, notifier=notifier, window_store=store,
                     policy=POLICY, clock=lambda: T0)  # fmt: skip
    return World(windows=windows, store=store, notifier=notifier, desk=desk)


LATEST = T0 + timedelta(seconds=5000)  # what the scheduled notice said; never the desk's to change


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    body=_body(),
    sender=_sender(),
    message_id=st.none() | st.text(max_size=8),
    incident=_incident,
    plans=st.fixed_dictionaries({vm_uuid: _planned() for vm_uuid in VMS}),
    store_fails=st.integers(0, 19).map(lambda n: n == 0),
)
def test_random_deliveries_down_the_production_reply_path(
    body: bytes, sender: tuple[str | None, str], message_id: str | None, incident: Incident,
    plans: dict[str, Planned | None], store_fails: bool,
) -> None:  # fmt: skip
    user_id, routing_key = sender
    world = _world(incident, plans, store_fails)
    # As ReplyConsumer._on_message: route the delivery, then hand it to the desk's matching handler.
    routed = route_delivery(host="hv1", user_id=user_id, routing_key=routing_key, body=body,
                            message_id=message_id)  # fmt: skip
    with capture_logs() as logs:
        if isinstance(routed, RejectedDelivery):
            world.desk.on_rejected(routed)
        else:
            world.desk.on_reply(routed)
    events = [entry["event"] for entry in logs]
    assert set(events) <= DESK_EVENTS
    answered = _answered_to(routed, routing_key)
    refusals = _check_refusals(world, answered, routing_key, message_id)
    actions = _check_actions(world, routed, user_id, routing_key, incident, plans, logs)
    # Exactly one answer or one action for whom the broker vouches for, and none for anybody else.
    assert len(refusals) + len(actions) == (1 if answered else 0)
    assert not refusals or {"reply_refused", "reply_rejected"} & set(events)
    event(refusals[0] if refusals else actions[0] if actions else "silence")


def _answered_to(routed: TenantReply | RejectedDelivery, routing_key: str) -> str | None:
    """Whom the desk must answer (with a refusal, or by acting): a vouched sender, the tenant the routing key
    names when the broker vouched for none, and, for a reply routed to every host, only the owner of a VM
    on this host."""
    if isinstance(routed, RejectedDelivery):
        tenant, _, to = routing_key.partition(".")
        if to == "all":
            assert routed.answer_to is None
        elif routed.user_id:
            assert routed.answer_to == routed.user_id
        else:
            # Without a user_id: the tenant `<tenant>.hv1` names, as only its user may publish that key.
            assert routed.answer_to == (tenant if to == "hv1" and is_word(tenant) else None)
        return routed.answer_to
    owner = FACTS[routed.reply.vm_uuid].tenant if routed.reply.vm_uuid in FACTS else None
    return routed.tenant if not routed.broadcast or owner == routed.tenant else None


def _check_refusals(
    world: World, answered: str | None, routing_key: str, message_id: str | None
) -> list[str]:
    """Every refusal is a documented code, answered to whom it must be, about the message it sent."""
    codes = []
    for kind, tenant, details in world.notifier.sent:
        assert kind in ("reply_rejected", "evacuation_updated")
        if kind != "reply_rejected":
            continue
        code = RejectCode(str(details["code"]))  # raises for a code that is not documented
        assert code is not RejectCode.NOT_OWNER, "another tenant's VM must look unknown"
        assert answered and tenant == answered and details["reason"] and details["in_reply_to"] == message_id
        assert routing_key.split(".")[1:] != ["all"] or code in (
            RejectCode.WRONG_ROUTING_KEY, RejectCode.REFUSED_REPLY), \
            "to every host: refused only by the owner's host, for the way it came or a window not stored"
        vm_uuid = details["vm_uuid"]
        if vm_uuid in FACTS and FACTS[vm_uuid].tenant != tenant:  # no probing: the words of an unknown VM
            assert (code, details["reason"]) == (RejectCode.UNKNOWN_VM, "no such VM on this host")
        codes.append(code.value)
    return codes


def _check_actions(
    world: World, routed: TenantReply | RejectedDelivery, user_id: str | None, routing_key: str,
    incident: Incident, plans: dict[str, Planned | None], logs: Sequence[Mapping[str, Any]],
) -> list[str]:  # fmt: skip
    """Anything acted upon came from the owner, on its own routing key (a register: or to every host), about
    its own VM, within the caps; the tenant hears the new deadline of each window changed."""
    windows = world.windows
    acted = [("expedite", vm) for vm in windows.expedited] + [("postpone", vm) for vm, _ in windows.postponed]
    acted += [("register", vm) for vm, _ in world.store.stored]
    updates = [(to, d) for kind, to, d in world.notifier.sent if kind == "evacuation_updated"]
    assert len(updates) == len(windows.postponed) + len(windows.expedited), "one update per window changed"
    if not acted:
        return []
    assert isinstance(routed, TenantReply) and user_id
    [(kind, vm_uuid)] = acted
    assert routing_key == f"{user_id}.hv1" or (kind == "register" and routing_key == f"{user_id}.all")
    assert routed.tenant == user_id and routed.reply.vm_uuid == vm_uuid
    assert FACTS[vm_uuid].tenant == user_id
    reply = routed.reply
    events = {entry["event"]: entry for entry in logs}
    if windows.expedited:
        _pending(incident, plans[vm_uuid], reply, user_id)
        assert isinstance(reply, ReadyReply) and "tenant_ready" in events
        [(to, update)] = updates
        assert to == user_id and update["cause"] == "expedited"
        assert [(vm.deadline, vm.latest_deadline) for vm in update["vms"]] == [(T0, LATEST)]  # type: ignore[attr-defined]
    for _, deadline in windows.postponed:
        plan = _pending(incident, plans[vm_uuid], reply, user_id)
        assert plan.deadline is not None and incident.severity is not Severity.FAILED
        cap = timedelta(seconds=POLICY.max_postpone_seconds)
        assert plan.deadline < deadline <= plan.planned_deadline + cap
        assert deadline <= T0 + timedelta(seconds=POLICY.severe_hard_limit_seconds)
        assert isinstance(reply, PostponeReply) and "tenant_postponed" in events
        told = events["tenant_postponed"]
        assert told["granted_seconds"] == (deadline - plan.deadline).total_seconds()
        assert 0 < told["granted_seconds"] <= told["requested_seconds"] == reply.postpone_seconds
        [(to, update)] = updates
        assert to == user_id and update["cause"] == "postponed"
        assert [(vm.deadline, vm.latest_deadline) for vm in update["vms"]] == [(deadline, LATEST)]  # type: ignore[attr-defined]
    for _, window_seconds in world.store.stored:
        assert isinstance(reply, RegisterReply) and "tenant_window_registered" in events
        assert 0 <= window_seconds == min(reply.window_seconds, POLICY.max_window_seconds)
    return [kind for kind, _ in acted]


def _pending(incident: Incident, plan: Planned | None, reply: Reply, tenant: str) -> Planned:
    """The VM's evacuation was pending (in the incident, window open and still there) and its deadline not yet
    reached; the reply named the event its tenant was told, or none."""
    assert plan is not None and plan.told and plan.deadline is not None and not plan.closes_behind
    assert plan.deadline > T0
    assert isinstance(reply, ReadyReply | PostponeReply)
    assert reply.event_id in (None, incident.event_ids[tenant])
    return plan
