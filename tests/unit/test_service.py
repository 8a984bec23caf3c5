"""The service over fakes: verdicts open one incident, replies change its windows, timers move the VMs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.incident.approval import Approvals, Decision, EvacuationPolicy
from evacuator.incident.ledger import Incident, IncidentLedger, LedgerVm
from evacuator.incident.planner import WindowPolicy
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.reply_policy import ReplyPolicy
from evacuator.incident.service import Service, ServiceConfig
from evacuator.incident.windows import EvacuationWindows, WindowChange
from evacuator.lab.vms import domain_xml
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.guard import CloudGuard
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveState
from evacuator.placement.guards import GuardPolicy
from evacuator.placement.model import HostState, Room, Verdict
from evacuator.wiring.moves import assemble_engine
from monitors.verdicts import HostVerdict, Reason, Severity
from notifiers.messages import ReadyReply
from notifiers.reply_acceptance import TenantReply
from tests.fakes.guards import GIB, FakeGuardState, FakeGuardView
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.notifier import RecordingNotifier
from tests.fakes.timers import ManualTimers
from tests.fakes.windows import FakeWindows, RecordingWindowStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=3600, max_window_seconds=3600)
HOT = Reason(
    source="hwmon", sensor="coretemp/temp1", value=97.0, threshold=90.0, unit="celsius", message="hot"
)


def verdict(severity: Severity) -> HostVerdict:
    reasons = () if severity is Severity.HEALTHY else (HOT,)
    return HostVerdict(severity=severity, reasons=reasons, at=T0)


class FakeMover:
    """Opens both fake hosts for the engine; `fail_with` makes the next move fail, `moved` lists arrivals."""

    def __init__(self, source: FakeHypervisor, destination: FakeHypervisor) -> None:
        self.source, self.destination = source, destination
        self.moved: list[str] = []
        self.fail_with: Exception | None = None

    @contextmanager
    def open_host(self, name: str) -> Iterator[Hypervisor]:
        host = {"host-a": self.source, "host-b": self.destination}[name]
        if self.fail_with is not None and host is self.destination:
            raise self.fail_with
        yield host
        for vm in self.destination.list_vms():
            if vm.uuid not in self.moved and self.source.peek_vm(vm.uuid) is None:
                self.moved.append(vm.uuid)


def ticking_clock() -> Callable[[], datetime]:
    """Every reading of the clock moves it a second on, so the shutdown wait runs out at once."""
    ticks = iter(range(10**6))
    return lambda: T0 + timedelta(seconds=next(ticks))


class World:
    def __init__(
        self, journal_path: Path, timers: ManualTimers | None = None,
        hosts: tuple[FakeHypervisor, FakeHypervisor] | None = None, guard: CloudGuard | None = None,
        evacuation: EvacuationPolicy | None = None,
    ) -> None:  # fmt: skip
        self.journal_path = journal_path
        self.source, self.destination = hosts or (FakeHypervisor(name="host-a"),
                                                  FakeHypervisor(name="host-b"))
        self.timers = timers or ManualTimers()
        self.notifier = RecordingNotifier(clock=lambda: T0)
        self.mover = FakeMover(self.source, self.destination)
        self.journal = Journal(journal_path)
        self.ledger = IncidentLedger(journal_path.with_name("incident.sqlite"))
        self.engine = assemble_engine(
            EngineConfig(host="host-a", peers=("host-b",), move_attempts=1),
            MigrationTimings(shutdown_timeout_seconds=1),
            journal=self.journal, hypervisor=self.source, open_host=self.mover.open_host,
            clock=ticking_clock(), sleep=lambda s: None, gate=guard,
        )  # fmt: skip
        self.service = Service(
            config=ServiceConfig(
                host="host-a", peers=("host-b",),
                window_policy=WindowPolicy(default_window_seconds=600, max_window_seconds=3600),
                reply_policy=POLICY, evacuation=evacuation or EvacuationPolicy(),
            ),
            hypervisor=self.source, notifier=self.notifier, timers=self.timers, engine=self.engine,
            ledger=self.ledger, clock=lambda: T0, guard=guard, costs=self.journal,
        )  # fmt: skip
        self.uuids: dict[str, str] = {}

    def restart(self, timers: ManualTimers) -> World:
        """This daemon stopped and started again on the same state (journal, ledger) and hosts, with the
        timers its store kept (`timers`, which a test fills as the store would have)."""
        self.service.stop()
        self.journal.close()
        self.ledger.close()
        again = World(self.journal_path, timers=timers, hosts=(self.source, self.destination))
        again.uuids = dict(self.uuids)
        again.service.start()
        return again

    def add_vm(self, name: str, tenant: str | None, window: int | None) -> str:
        self.source.add_volume("evacuator", f"{name}.raw", capacity_bytes=4096, data=name.encode())
        xml = domain_xml(
            name=name,
            pool="evacuator",
            volume=f"{name}.raw",
            mac="52:54:00:00:00:01",
            uuid=str(uuid.uuid4()),
            facts=VmFacts(tenant=tenant, window_seconds=window),
        )
        self.uuids[name] = self.source.add_vm(xml, state=VmState.RUNNING).uuid
        return self.uuids[name]

    def kinds(self) -> list[tuple[str, str]]:
        return [(kind, tenant) for kind, tenant, _ in self.notifier.sent]

    def wait_moved(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while len(self.mover.moved) + self.kinds().count(("evacuation_failed", "acme")) < count:
            assert time.monotonic() < deadline, "the worker did not finish the moves"
            time.sleep(0.01)
        while self.service.busy() and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "journal.sqlite")
    w.service.start()
    yield w
    w.service.stop()
    w.journal.close()
    w.ledger.close()


def test_severe_verdict_notifies_each_tenant_and_opens_a_timer_per_vm(world: World) -> None:
    web = world.add_vm("web", "acme", 60)
    db = world.add_vm("db", "beta", None)
    world.service.on_verdict(verdict(Severity.SEVERE))
    assert world.kinds() == [("evacuation_scheduled", "acme"), ("evacuation_scheduled", "beta")]
    assert world.timers.pending() == {web: T0 + timedelta(seconds=60), db: T0 + timedelta(seconds=600)}
    assert world.mover.moved == []


def test_a_host_that_stays_severe_is_planned_and_notified_once(world: World) -> None:
    world.add_vm("web", "acme", 60)
    for _ in range(5):
        world.service.on_verdict(verdict(Severity.SEVERE))
    assert world.kinds() == [("evacuation_scheduled", "acme")]


@pytest.mark.parametrize("severity", [Severity.HEALTHY, Severity.MODERATE, Severity.UNKNOWN])
def test_verdicts_below_severe_move_nothing(world: World, severity: Severity) -> None:
    world.add_vm("web", "acme", 60)
    world.service.on_verdict(verdict(severity))
    assert world.notifier.sent == [] and world.timers.pending() == {}


def test_deadline_moves_the_vm_and_tells_its_tenant(world: World) -> None:
    web = world.add_vm("web", "acme", 60)
    world.service.on_verdict(verdict(Severity.SEVERE))
    world.timers.advance(T0 + timedelta(seconds=59))
    assert world.mover.moved == []
    world.timers.advance(T0 + timedelta(seconds=60))
    world.wait_moved(1)
    assert world.mover.moved == [web]
    assert world.destination.peek_vm(web) is not None and world.source.peek_vm(web) is None
    # The move's own notice, then (its tenant's last VM) the summary.
    assert world.kinds()[-2:] == [("vm_evacuated", "acme"), ("evacuation_completed", "acme")]
    assert world.notifier.sent[-2][2]["to_host"] == "host-b"


def test_vm_evacuated_tells_the_tenant_the_downtime_and_the_bytes_its_journal_recorded(
    world: World,
) -> None:
    web = world.add_vm("web", "acme", 60)
    idle = world.add_vm("idle", "acme", 60)
    world.source.destroy_vm(idle)  # off before the move: it stays off there, so nothing was down
    world.service.on_verdict(verdict(Severity.SEVERE))
    with capture_logs() as logs:
        world.timers.advance(T0 + timedelta(seconds=60))
        world.wait_moved(2)
    told = {d["vm_uuid"]: d for kind, _, d in world.notifier.sent if kind == "vm_evacuated"}
    copied = {e["vm_uuid"]: e["bytes_copied"] for e in logs if e["event"] == "move_finished"}
    downtime = told[web]["downtime_seconds"]
    # The clock ticks a second per reading: the guest is off for a few of them, inside the move.
    assert isinstance(downtime, float) and 0 < downtime < 60
    assert downtime == world.journal.cost(web).downtime_seconds
    assert told[idle]["downtime_seconds"] is None
    assert (told[web]["bytes_moved"], told[idle]["bytes_moved"]) == (copied[web], copied[idle])
    assert copied[web] > 0 and copied[idle] > 0
    measured = {e["vm_uuid"]: e["downtime_seconds"] for e in logs if e["event"] == "move_cost_measured"}
    assert measured == {web: downtime, idle: None}


def test_tenant_hears_started_per_vm_and_completed_once_after_its_last_vm(world: World) -> None:
    web = world.add_vm("web", "acme", 60)
    db = world.add_vm("db", "acme", 120)
    world.service.on_verdict(verdict(Severity.SEVERE))
    world.timers.advance(T0 + timedelta(seconds=60))
    world.wait_moved(1)
    assert ("evacuation_completed", "acme") not in world.kinds()
    world.timers.advance(T0 + timedelta(seconds=120))
    world.wait_moved(2)
    kinds = [kind for kind, _ in world.kinds()]
    assert kinds.count("evacuation_started") == 2 and kinds.count("evacuation_completed") == 1
    assert kinds.index("evacuation_completed") == len(kinds) - 1
    completed = world.notifier.sent[-1][2]
    assert sorted(completed["moved"]) == sorted([web, db]) and completed["failed"] == ()


def test_completed_lists_the_failed_vm(world: World) -> None:
    web = world.add_vm("web", "acme", 0)
    world.mover.fail_with = RuntimeError("no room")
    world.service.on_verdict(verdict(Severity.SEVERE))
    world.timers.advance(T0)
    world.wait_moved(1)
    deadline = time.monotonic() + 5
    while ("evacuation_completed", "acme") not in world.kinds() and time.monotonic() < deadline:
        time.sleep(0.01)
    completed = [details for kind, _, details in world.notifier.sent if kind == "evacuation_completed"]
    assert completed == [{"moved": (), "failed": (web,)}]


def _reply_desk(world: World) -> ReplyDesk:
    """The desk as the wiring builds it: windows changed through the service, the service's ledger."""
    return ReplyDesk(hypervisor=world.source, windows=world.service, ledger=world.ledger,
                     notifier=world.notifier, window_store=RecordingWindowStore(), policy=POLICY,
                     clock=lambda: T0)  # fmt: skip


def _ready(tenant: str, vm_uuid: str) -> TenantReply:
    return TenantReply(tenant=tenant, host="host-a", reply=ReadyReply(vm_uuid=vm_uuid), message_id=None)


def test_owner_ready_expedites_and_others_are_refused(world: World) -> None:
    web = world.add_vm("web", "acme", 600)
    world.service.on_verdict(verdict(Severity.SEVERE))
    desk = _reply_desk(world)
    with capture_logs() as logs:
        desk.on_reply(_ready("mallory", web))
        desk.on_reply(_ready("acme", "00000000-0000-4000-8000-000000000000"))
    refused = [(e["tenant"], e["reason"]) for e in logs if e["event"] == "reply_refused"]
    assert refused == [("mallory", "not_owner"), ("acme", "unknown_vm")]
    rejected = [(tenant, d["code"]) for kind, tenant, d in world.notifier.sent if kind == "reply_rejected"]
    assert rejected == [("mallory", "unknown_vm"), ("acme", "unknown_vm")]
    assert world.timers.fired == []
    desk.on_reply(_ready("acme", web))
    world.wait_moved(1)
    assert world.mover.moved == [web]


def test_no_window_is_changed_or_opened_without_a_pending_evacuation(world: World) -> None:
    web = world.add_vm("web", "acme", 600)
    assert world.service.deadline(web) is None
    assert world.service.expedite(web) is WindowChange.NOT_PENDING
    assert world.service.postpone(web, T0 + timedelta(seconds=60)) is WindowChange.NOT_PENDING
    assert world.timers.pending() == {} and world.timers.fired == []


def _windows_contract(windows: EvacuationWindows, vm_uuid: str, deadline: datetime) -> None:
    """What the desk relies on, for the service and its fake alike: changes act on the open window only."""
    later = deadline + timedelta(seconds=300)
    assert windows.deadline(vm_uuid) == deadline
    assert windows.postpone(vm_uuid, later) is WindowChange.APPLIED
    assert windows.deadline(vm_uuid) == later
    assert windows.expedite(vm_uuid) is WindowChange.APPLIED
    assert windows.deadline(vm_uuid) is None
    assert windows.expedite(vm_uuid) is WindowChange.NOT_PENDING
    assert windows.postpone(vm_uuid, later) is WindowChange.NOT_PENDING
    assert windows.deadline(vm_uuid) is None


def test_the_service_changes_a_vms_window_through_its_timer(world: World) -> None:
    web = world.add_vm("web", "acme", 600)
    world.service.on_verdict(verdict(Severity.SEVERE))
    _windows_contract(world.service, web, T0 + timedelta(seconds=600))
    assert world.timers.fired == [web]
    world.wait_moved(1)
    assert world.mover.moved == [web]


def test_the_windows_fake_keeps_the_same_contract() -> None:
    windows = FakeWindows()
    windows.open("vm-1", T0)
    _windows_contract(windows, "vm-1", T0)


def test_failed_host_gets_no_window(world: World) -> None:
    web = world.add_vm("web", "acme", 600)
    world.service.on_verdict(verdict(Severity.FAILED))
    assert world.timers.pending() == {web: T0}


def test_a_failed_move_is_reported_to_the_tenant(world: World) -> None:
    world.add_vm("web", "acme", 0)
    world.mover.fail_with = RuntimeError("destination pool full")
    world.service.on_verdict(verdict(Severity.SEVERE))
    world.timers.advance(T0)
    world.wait_moved(1)
    kind, tenant, details = world.notifier.sent[-2]
    assert (kind, tenant) == ("evacuation_failed", "acme")
    assert world.kinds()[-1] == ("evacuation_completed", "acme")
    assert "pool full" in str(details["reason"])


def test_a_notice_that_cannot_be_sent_still_leaves_the_timers(world: World) -> None:
    web = world.add_vm("web", "acme", 60)
    world.notifier.inject_error(RuntimeError("broker down"))
    world.service.on_verdict(verdict(Severity.SEVERE))
    assert web in world.timers.pending()


def test_incident_closes_when_healthy_and_a_new_spell_plans_again(world: World) -> None:
    world.add_vm("web", "acme", 60)
    world.service.on_verdict(verdict(Severity.SEVERE))
    world.timers.advance(T0 + timedelta(seconds=60))
    world.wait_moved(1)
    world.service.on_verdict(verdict(Severity.HEALTHY))
    world.add_vm("api", "acme", 60)
    world.service.on_verdict(verdict(Severity.SEVERE))
    assert world.kinds().count(("evacuation_scheduled", "acme")) == 2


# --- Restarts: the open incident is carried on from the ledger ------------------------------------------


def _carried(timers: ManualTimers) -> ManualTimers:
    """The timers a persistent store hands back after a restart: the same deadlines."""
    again = ManualTimers()
    for key, at in timers.pending().items():
        again.schedule(key, at)
    return again


def _scheduled(world: World) -> list[dict[str, object]]:
    return [details for kind, _, details in world.notifier.sent if kind == "evacuation_scheduled"]


def test_a_restart_mid_window_carries_on_the_incident_and_tells_nobody_twice(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    web, db = world.add_vm("web", "acme", 600), world.add_vm("db", "acme", 300)
    world.service.on_verdict(verdict(Severity.SEVERE))
    [told] = _scheduled(world)
    assert world.service.postpone(db, T0 + timedelta(seconds=900)) is WindowChange.APPLIED
    again = world.restart(_carried(world.timers))
    for _ in range(3):
        again.service.on_verdict(verdict(Severity.SEVERE))
    assert again.notifier.sent == [], "no second scheduled notice, nor anything else"
    assert again.timers.pending() == {web: T0 + timedelta(seconds=600), db: T0 + timedelta(seconds=900)}
    assert again.ledger.event_for("acme") == told["event_id"]
    # The tenant's ready naming the first notice's event moves one VM at once.
    desk = _reply_desk(again)
    desk.on_reply(TenantReply(tenant="acme", host="host-a", message_id=None,
                              reply=ReadyReply(vm_uuid=web, event_id=str(told["event_id"]))))
    again.wait_moved(1)
    assert again.mover.moved == [web]
    kinds = [kind for kind, _ in again.kinds()]
    assert {"evacuation_updated", "evacuation_started"} <= set(kinds) and "reply_rejected" not in kinds
    again.service.stop()


def test_timers_lost_in_a_crash_come_back_at_the_ledgers_deadlines(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    web, db = world.add_vm("web", "acme", 600), world.add_vm("db", "beta", 300)
    world.service.on_verdict(verdict(Severity.SEVERE))
    world.service.postpone(db, T0 + timedelta(seconds=700))
    with capture_logs() as logs:
        again = world.restart(ManualTimers())  # the store lost both (or never had them)
    assert again.timers.pending() == {web: T0 + timedelta(seconds=600), db: T0 + timedelta(seconds=700)}
    assert [e["vm_uuid"] for e in logs if e["event"] == "evacuation_window_restored"] == [db, web]
    assert again.notifier.sent == []
    again.service.stop()


def test_a_ready_journaled_just_before_a_crash_still_moves_the_vm_now(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    web = world.add_vm("web", "acme", 600)
    world.service.on_verdict(verdict(Severity.SEVERE))
    record = world.ledger.get(web)
    assert record is not None
    world.ledger.reschedule(record, T0)  # what expedite journals before it fires the timer: then the crash
    again = world.restart(_carried(world.timers))
    assert again.timers.pending() == {web: T0}
    again.timers.advance(T0)
    again.wait_moved(1)
    assert again.mover.moved == [web]
    again.service.stop()


def test_a_scheduled_notice_never_handed_over_goes_out_after_a_restart_unchanged(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    web = world.add_vm("web", "acme", 600)

    world.notifier.refuse("evacuation_scheduled", RuntimeError("the outbox is closed"))  # nothing stored
    world.service.on_verdict(verdict(Severity.SEVERE))
    record = world.ledger.get(web)
    assert record is not None and world.notifier.sent == []
    again = world.restart(_carried(world.timers))
    [told] = _scheduled(again)
    assert told["event_id"] == record.event_id
    [vm] = told["vms"]  # type: ignore[misc]
    assert (vm.deadline, vm.latest_deadline) == (T0 + timedelta(seconds=600), T0 + timedelta(seconds=2400))
    third = again.restart(_carried(again.timers))
    assert third.notifier.sent == [], "handed over once: not again at the next restart"
    third.service.stop()


def test_the_tenant_hears_completed_once_across_a_restart(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    web, db = world.add_vm("web", "acme", 60), world.add_vm("db", "acme", 120)
    world.service.on_verdict(verdict(Severity.SEVERE))
    world.timers.advance(T0 + timedelta(seconds=60))
    world.wait_moved(1)
    again = world.restart(_carried(world.timers))
    again.timers.advance(T0 + timedelta(seconds=120))
    again.wait_moved(2)
    deadline = time.monotonic() + 5
    while ("evacuation_completed", "acme") not in again.kinds() and time.monotonic() < deadline:
        time.sleep(0.01)
    [completed] = [d for kind, _, d in again.notifier.sent if kind == "evacuation_completed"]
    assert sorted(completed["moved"]) == sorted([web, db])  # type: ignore[arg-type]
    assert ("evacuation_completed", "acme") not in world.kinds()
    again.service.stop()


def test_a_host_that_recovered_while_down_still_moves_what_its_tenants_were_promised(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    web = world.add_vm("web", "acme", 60)
    world.service.on_verdict(verdict(Severity.SEVERE))
    again = world.restart(_carried(world.timers))
    again.service.on_verdict(verdict(Severity.HEALTHY))
    assert again.ledger.open_incident() is not None, "open while its windows run"
    again.timers.advance(T0 + timedelta(seconds=60))
    again.wait_moved(1)
    assert again.mover.moved == [web]
    again.service.on_verdict(verdict(Severity.HEALTHY))
    assert again.ledger.open_incident() is None
    again.service.stop()


def test_a_crash_between_the_ledger_and_the_journal_journals_the_moves_at_restart(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    web = world.add_vm("web", "acme", 600)
    incident = Incident(incident_id="i-1", severity=Severity.SEVERE, reasons=(HOT,), opened_at=T0)
    # What _open_incident writes first; the process dies before the journal and the timers.
    world.ledger.open(incident, [LedgerVm(vm_uuid=web, vm_name="web", tenant="acme",
                                          deadline=T0 + timedelta(seconds=600), latest_deadline=None)],
                      {"acme": "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"})  # fmt: skip
    assert world.engine.record(web) is None
    again = world.restart(ManualTimers())
    record = again.engine.record(web)
    assert record is not None and record.state is MoveState.NOTIFIED
    assert record.deadline == T0 + timedelta(seconds=600)
    assert again.timers.pending() == {web: T0 + timedelta(seconds=600)}
    [told] = _scheduled(again)
    assert told["event_id"] == "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
    again.timers.advance(T0 + timedelta(seconds=600))
    again.wait_moved(1)
    assert again.mover.moved == [web]
    again.service.stop()


def test_a_host_held_back_by_the_guards_tells_its_tenants_and_moves_once_allowed(tmp_path: Path) -> None:
    """Two of ten hosts evacuate already (the 25% guard): the window closes, the move waits, every tenant
    with VMs still to move hears evacuation_updated (held_back, too_many_evacuating) once; a permit frees,
    the move goes; the incident's last VM gives the permit back and the host stops saying it evacuates."""
    cloud = [HostState(name=name, verdict=Verdict.HEALTHY, seen_at=T0,
                       capacity=Room(memory_bytes=100 * GIB, vcpus=64, disk_bytes=1000 * GIB),
                       free=Room(memory_bytes=60 * GIB, vcpus=40, disk_bytes=600 * GIB))
             for name in ["host-a", *(f"hv-{i}" for i in range(9))]]  # fmt: skip
    state = FakeGuardState(held={0, 1})
    view = FakeGuardView(cloud, {"hv-1": T0 - timedelta(hours=1), "hv-2": T0 - timedelta(hours=1)})
    announced: list[datetime | None] = []
    guard = CloudGuard(host="host-a", policy=GuardPolicy(min_start_spacing_seconds=0), state=state, view=view,
                       announce=announced.append, clock=lambda: T0, poll_seconds=0.01)  # fmt: skip
    world = World(tmp_path / "journal.sqlite", guard=guard)
    world.service.start()
    try:
        web = world.add_vm("web", "acme", 60)
        world.add_vm("db", "beta", 600)
        world.service.on_verdict(verdict(Severity.SEVERE))
        world.timers.advance(T0 + timedelta(seconds=60))
        deadline = time.monotonic() + 5
        while ("evacuation_updated", "beta") not in world.kinds():
            assert time.monotonic() < deadline, "the tenants were told the hold"
            time.sleep(0.01)
        held = [details for kind, _, details in world.notifier.sent if kind == "evacuation_updated"]
        assert [(d["cause"], d["hold"]) for d in held] == [("held_back", "too_many_evacuating")] * 2
        assert world.mover.moved == [], "held: nothing moved"
        state.held.discard(1)
        del view.evacuating["hv-2"]
        world.wait_moved(1)
        assert world.mover.moved == [web] and len(announced) == 1 and announced[0] is not None
        world.timers.advance(T0 + timedelta(seconds=600))
        world.wait_moved(2)
        assert announced[-1] is None and state.held == {0}, "the permit given back after the last VM"
        assert [kind for kind, _ in world.kinds()].count("evacuation_updated") == 2, "told once"
    finally:
        world.service.stop()
        world.journal.close()
        world.ledger.close()


def test_a_drain_moves_every_vm_of_a_healthy_host_with_maintenance_notices(world: World) -> None:
    """`evacuator drain`: the incident is the admin's (its one reason, source maintenance), each tenant is
    told with the drain's window for a VM that registered none; a second drain while it runs is refused."""
    web = world.add_vm("web", "acme", 60)
    db = world.add_vm("db", "beta", None)
    outcome, incident_id = world.service.drain(reason="BIOS update", window_seconds=30)
    assert outcome == "accepted" and incident_id is not None and world.service.draining()
    assert world.timers.pending() == {web: T0 + timedelta(seconds=60), db: T0 + timedelta(seconds=30)}
    scheduled = [details for kind, _, details in world.notifier.sent if kind == "evacuation_scheduled"]
    assert len(scheduled) == 2
    incident = scheduled[0]["incident"]
    assert isinstance(incident, Incident) and incident.planned
    assert [(r.source, r.message) for r in incident.reasons] == [("maintenance", "BIOS update")]
    again, same = world.service.drain(reason="twice", window_seconds=None)
    assert again.startswith("refused: an evacuation is under way") and same == incident_id
    world.service.on_verdict(verdict(Severity.SEVERE))  # a sick spell meanwhile opens nothing new
    assert [kind for kind, _ in world.kinds()].count("evacuation_scheduled") == 2
    world.timers.advance(T0 + timedelta(seconds=60))
    world.wait_moved(2)
    world.service.on_verdict(verdict(Severity.HEALTHY))
    assert not world.service.draining(), "the drain's incident closes once every VM moved"


MANUAL_SEVERE = EvacuationPolicy(manual=frozenset({Severity.SEVERE}))


def test_a_manual_evacuation_waits_for_approval_telling_no_one(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite", evacuation=MANUAL_SEVERE)
    world.service.start()
    try:
        world.add_vm("web", "acme", 60)
        with capture_logs() as logs:
            for _ in range(3):
                world.service.on_verdict(verdict(Severity.SEVERE))
        assert world.notifier.sent == [] and world.timers.pending() == {}, "nobody told, nothing planned"
        assert [e["event"] for e in logs].count("evacuation_withheld") == 1
        awaiting = world.service.awaiting_approval()
        assert awaiting is not None and awaiting.severity is Severity.SEVERE
        assert world.service.approve().startswith("accepted")
        world.service.on_verdict(verdict(Severity.SEVERE))
        assert world.kinds() == [("evacuation_scheduled", "acme")]
        assert world.service.awaiting_approval() is None
    finally:
        world.service.stop()
        world.journal.close()
        world.ledger.close()


def test_a_rejected_evacuation_stays_quarantined_until_the_host_was_healthy(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite", evacuation=MANUAL_SEVERE)
    world.service.start()
    try:
        world.add_vm("web", "acme", 60)
        assert world.service.reject().startswith("refused"), "nothing awaits approval yet"
        world.service.on_verdict(verdict(Severity.SEVERE))
        assert world.service.reject().startswith("accepted")
        world.service.on_verdict(verdict(Severity.SEVERE))
        assert world.notifier.sent == [] and world.service.awaiting_approval() is None
        world.service.on_verdict(verdict(Severity.FAILED))  # failed is automatic here: it evacuates at once
        assert world.kinds() == [("evacuation_scheduled", "acme")]
    finally:
        world.service.stop()
        world.journal.close()
        world.ledger.close()


@pytest.mark.parametrize(("policy", "severity", "decision"), [
    (EvacuationPolicy(), Severity.SEVERE, Decision.EVACUATE),
    (EvacuationPolicy(on_severe="quarantine"), Severity.SEVERE, Decision.QUARANTINE),
    (EvacuationPolicy(on_severe="quarantine"), Severity.FAILED, Decision.EVACUATE),
    (EvacuationPolicy(on_failed="quarantine"), Severity.FAILED, Decision.QUARANTINE),
    (EvacuationPolicy(manual=frozenset({Severity.FAILED})), Severity.FAILED, Decision.AWAIT_APPROVAL),
    (EvacuationPolicy(manual=frozenset({Severity.FAILED})), Severity.SEVERE, Decision.EVACUATE),
    (EvacuationPolicy(), Severity.MODERATE, Decision.QUARANTINE),  # DESIGN: moderate only quarantines
    (EvacuationPolicy(on_moderate="notify"), Severity.MODERATE, Decision.NOTIFY),
    (EvacuationPolicy(on_moderate="evacuate"), Severity.MODERATE, Decision.EVACUATE),
    (EvacuationPolicy(on_moderate="evacuate", manual=frozenset({Severity.MODERATE})), Severity.MODERATE,
     Decision.AWAIT_APPROVAL),
    (EvacuationPolicy(on_severe="notify"), Severity.SEVERE, Decision.NOTIFY),
    (EvacuationPolicy(on_failed="notify", manual=frozenset({Severity.FAILED})), Severity.FAILED,
     Decision.NOTIFY),  # telling waits for nobody
    (EvacuationPolicy(), Severity.HEALTHY, Decision.NOTHING),
])  # fmt: skip
def test_each_severity_is_evacuated_quarantined_or_awaits_approval_as_configured(
    policy: EvacuationPolicy, severity: Severity, decision: Decision
) -> None:
    assert Approvals(policy).decide(verdict(severity)) is decision


def test_a_healthy_verdict_forgets_an_approval() -> None:
    approvals = Approvals(EvacuationPolicy(manual=frozenset({Severity.SEVERE})))
    assert approvals.decide(verdict(Severity.SEVERE)) is Decision.AWAIT_APPROVAL
    approvals.approve()
    assert approvals.decide(verdict(Severity.SEVERE)) is Decision.EVACUATE
    approvals.decide(verdict(Severity.HEALTHY))
    assert approvals.decide(verdict(Severity.SEVERE)) is Decision.AWAIT_APPROVAL, "a new spell asks again"
