"""Return to service over values and fakes: when a host is in service, which VMs go back where, the origin
record a VM carries, and the offers a host makes (incident/returns.py)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from evacuator.errors import HypervisorError
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmState, parse_definition
from evacuator.hypervisor.origin import Origin, render_origin, with_origin
from evacuator.incident.returns import MoveBackOffers
from evacuator.lab.vms import domain_xml
from evacuator.peers.state_publisher import HostStatus, Switches, build_state
from evacuator.placement.model import HostState, Room, Verdict
from evacuator.placement.returns import Departed, InService, returns_due, welcoming
from evacuator.placement.view import Heard
from monitors.verdicts import HostVerdict, Severity
from tests.fakes.hypervisor import FakeHypervisor

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
ROOM = Room(memory_bytes=64 << 30, vcpus=32, disk_bytes=1 << 40)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_host_is_in_service_from_its_first_healthy_verdict_outside_maintenance() -> None:
    service = InService()
    steps = [  # (seconds, verdict, maintenance) -> in service since
        (0, Verdict.UNKNOWN, False, None),
        (1, Verdict.HEALTHY, False, at(1)),
        (2, Verdict.HEALTHY, False, at(1)),
        (3, Verdict.SEVERE, False, None),
        (4, Verdict.MODERATE, False, None),
        (5, Verdict.HEALTHY, False, at(5)),  # the detector's hold-down has passed: healthy again
        (6, Verdict.HEALTHY, True, None),  # drained
        (7, Verdict.HEALTHY, True, None),
        (8, Verdict.HEALTHY, False, at(8)),  # undrained
        (9, Verdict.FAILED, False, None),
    ]
    for seconds, verdict, maintenance, since in steps:
        service.set_maintenance(maintenance)
        assert service.maintenance is maintenance
        assert service.observe(verdict, at(seconds)) == since, f"at {seconds} s ({verdict}, {maintenance})"


def host(name: str, *, verdict: Verdict = Verdict.HEALTHY, seen: float = 0, **flags: bool) -> HostState:
    return HostState(name=name, verdict=verdict, seen_at=at(seen), capacity=ROOM, free=ROOM, **flags)


def test_only_hosts_that_may_take_vms_and_ask_are_welcoming() -> None:
    states = [
        (host("asks"), at(5)),
        (host("silent"), None),
        (host("sick", verdict=Verdict.SEVERE), at(5)),
        (host("stale", seen=-100), at(5)),
        (host("quarantined", quarantined=True), at(5)),
        (host("drained", maintenance=True), at(5)),
        (host("refusing", accepting=False), at(5)),
    ]
    assert welcoming(states, at(10), stale_after_seconds=30) == {"asks": at(5)}


@pytest.mark.parametrize(("origin", "left", "wanted", "due"), [
    ("host-a", 1, {"host-a": at(5)}, True),  # left before host-a came back: goes back
    ("host-a", 6, {"host-a": at(5)}, False),  # left a host already in service: stays
    ("host-a", 1, {}, False),  # host-a does not ask
    ("host-c", 1, {"host-a": at(5)}, False),  # another host asks
    ("host-b", 1, {"host-b": at(5)}, False),  # its origin is this host itself
])  # fmt: skip
def test_a_vm_goes_back_only_to_its_origin_asking_since_after_it_left(
    origin: str, left: float, wanted: Mapping[str, datetime], due: bool
) -> None:
    departed = [Departed(vm_uuid="u1", origin=origin, left_at=at(left))]
    assert returns_due("host-b", departed, wanted) == ({"u1": origin} if due else {})


def vm_xml(name: str, origin: Origin | None = None) -> str:
    xml = domain_xml(name=name, pool="evacuator", volume=f"{name}.raw", mac="52:54:00:00:00:01",
                     facts=VmFacts(tenant="acme", window_seconds=30), uuid=str(uuid.uuid4()))  # fmt: skip
    return with_origin(xml, origin)


def test_the_origin_travels_in_the_domain_xml_apart_from_the_tenants_facts() -> None:
    origin = Origin(host="host-a", left_at=at(3))
    xml = vm_xml("web", origin)
    definition = parse_definition(xml)
    assert definition.origin == origin and definition.facts == VmFacts(tenant="acme", window_seconds=30)
    replaced = parse_definition(with_origin(xml, Origin(host="host-c", left_at=at(9))))
    assert replaced.origin == Origin(host="host-c", left_at=at(9))
    removed = parse_definition(with_origin(xml, None))
    assert removed.origin is None and removed.facts == definition.facts
    assert render_origin(origin) == f'<origin host="host-a" left_at="{at(3).isoformat()}" />'


@pytest.mark.parametrize("element", [
    '<origin host="" left_at="2026-12-05T08:00:00+00:00"/>',
    '<origin host="host-a" left_at="yesterday"/>',
    '<origin host="host-a" left_at="2026-12-05T08:00:00"/>',  # no time zone
    '<origin host="host a" left_at="2026-12-05T08:00:00+00:00"/>',
])  # fmt: skip
def test_an_unreadable_origin_only_means_the_vm_is_not_offered_back(element: str) -> None:
    xml = vm_xml("web").replace(
        "</metadata>", element.replace("<origin", '<origin xmlns="https://evacuator.dev/xmlns/origin/1"')
        + "</metadata>")  # fmt: skip
    assert parse_definition(xml).origin is None


def test_a_host_asks_for_its_vms_back_only_with_move_back_on() -> None:
    status = HostStatus(verdict=Verdict.HEALTHY, in_service_since=at(5))

    def since(move_back: bool) -> datetime | None:
        message = build_state(host="host-a", incarnation="0" * 16, sequence=0, sent_at=at(6), status=status,
                              switches=Switches(move_back=move_back), room=None)  # fmt: skip
        return message.heard(at(6)).move_back_since

    assert since(True) == at(5) and since(False) is None
    silent = build_state(host="host-a", incarnation="0" * 16, sequence=0, sent_at=at(6), status=status,
                         switches=Switches(), room=None)  # fmt: skip
    body = silent.model_dump_json(exclude_none=True)
    assert "move_back_since" not in body, "left out: an older receiver still takes the state"


class FakeView:
    def __init__(self, *asking: tuple[HostState, datetime | None]) -> None:
        self._heard = [Heard(state=state, incarnation="i", sequence=0, sent_at=at(0), move_back_since=since)
                       for state, since in asking]  # fmt: skip

    def heard(self) -> list[Heard]:
        return self._heard


class FakeDesk:
    def __init__(self, *, open_incident: bool = False) -> None:
        self.open_incident = open_incident
        self.offers: list[dict[str, str]] = []

    def offer_returns(self, returns: Mapping[str, str]) -> str | None:
        if self.open_incident:
            return None
        self.offers.append(dict(returns))
        return "incident-1"


def offers(view: FakeView, desk: FakeDesk, here: FakeHypervisor, *,
           reachable: frozenset[str] = frozenset({"host-a", "host-c"})) -> MoveBackOffers:  # fmt: skip
    return MoveBackOffers(host="host-b", hypervisor=here, view=view, desk=desk,
                          reachable=reachable.__contains__, stale_after_seconds=30,
                          clock=lambda: at(10))  # fmt: skip


def vms_here() -> tuple[FakeHypervisor, dict[str, str]]:
    here = FakeHypervisor(name="host-b")
    uuids = {name: here.add_vm(vm_xml(name, origin), state=VmState.RUNNING).uuid for name, origin in (
        ("from-a", Origin(host="host-a", left_at=at(1))),
        ("from-a-later", Origin(host="host-a", left_at=at(7))),
        ("from-c", Origin(host="host-c", left_at=at(1))),
        ("own", None),
    )}  # fmt: skip
    return here, uuids


HEALTHY = HostVerdict(severity=Severity.HEALTHY, reasons=(), at=T0)


def test_a_host_offers_back_what_left_an_asking_host_before_it_came_back_and_forgets_the_origin() -> None:
    here, uuids = vms_here()
    desk = FakeDesk()
    view = FakeView((host("host-a", seen=9), at(5)), (host("host-c", seen=9), None))
    assert offers(view, desk, here).check(HEALTHY, maintenance=False) == "incident-1"
    assert desk.offers == [{uuids["from-a"]: "host-a"}]
    assert here.peek_vm(uuids["from-a"]).origin is None, "offered once"  # type: ignore[union-attr]
    assert here.peek_vm(uuids["from-c"]).origin is not None  # type: ignore[union-attr]
    assert offers(view, desk, here).check(HEALTHY, maintenance=False) is None and len(desk.offers) == 1


def test_no_offer_from_a_sick_or_drained_host_to_an_unreachable_one_or_while_an_incident_is_open() -> None:
    view = FakeView((host("host-a", seen=9), at(5)))
    here, uuids = vms_here()
    sick = HostVerdict(severity=Severity.SEVERE, reasons=(), at=T0)
    desk = FakeDesk()
    assert offers(view, desk, here).check(sick, maintenance=False) is None
    assert offers(view, desk, here).check(HEALTHY, maintenance=True) is None
    assert offers(view, desk, here, reachable=frozenset()).check(HEALTHY, maintenance=False) is None
    assert desk.offers == [] and "list_vms" not in here.calls, "nothing listed while no host may ask"
    busy = FakeDesk(open_incident=True)
    assert offers(view, busy, here).check(HEALTHY, maintenance=False) is None
    assert here.peek_vm(uuids["from-a"]).origin is not None, "kept for an offer after the incident"  # type: ignore[union-attr]


def test_an_origin_that_cannot_be_cleared_still_makes_one_offer() -> None:
    here, uuids = vms_here()
    here.inject_error("set_origin", HypervisorError("host-b: metadata refused"))
    desk = FakeDesk()
    view = FakeView((host("host-a", seen=9), at(5)))
    assert offers(view, desk, here).check(HEALTHY, maintenance=False) == "incident-1"
    assert desk.offers == [{uuids["from-a"]: "host-a"}]
