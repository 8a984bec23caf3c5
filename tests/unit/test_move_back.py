"""Moves back over fake hosts: every move records its source on the destination; a move back goes to its
origin or nowhere and leaves no origin; the service opens it as a planned incident; the journal and the
ledger keep where it goes, also in files an older version wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from evacuator.errors import HypervisorError
from evacuator.hypervisor.model import VmState
from evacuator.hypervisor.origin import Origin
from evacuator.incident.ledger import Incident, IncidentLedger, LedgerVm
from evacuator.incident.planner import PlannedMove
from evacuator.moves.journal import Journal, read_journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from monitors.verdicts import Severity
from tests.fakes.outcomes import RecordedOutcomes
from tests.unit.test_engine import T0, Hosts, make_engine, run_one
from tests.unit.test_service import World, verdict


def test_every_move_records_on_the_destination_where_the_vm_came_from(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    record, _, _ = run_one(tmp_path, hosts, web)
    moved = hosts.destination.peek_vm(web)
    assert record.state is MoveState.DONE and moved is not None
    assert moved.origin is not None and moved.origin.host == "host-a" and moved.origin.left_at >= T0


def move_back(tmp_path: Path, hosts: Hosts, vm_uuid: str) -> tuple[MoveRecord, RecordedOutcomes]:
    """host-a moves `vm_uuid` back to host-c, though host-b is its first peer."""
    told = RecordedOutcomes()
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = make_engine(hosts, journal, peers=("host-b", "host-c"))
        engine.plan([PlannedMove(vm_uuid=vm_uuid, vm_name="web", tenant="acme", window_seconds=0, deadline=T0,
                                 return_to="host-c")], may_restart_on_source=True)  # fmt: skip
        engine.start(timer_pending=lambda _: False, outcomes=told)
        assert engine.wait_idle(5)
        engine.stop()
        record = journal.get(vm_uuid)
    assert record is not None and record.return_to == "host-c"
    return record, told


def test_a_move_back_goes_to_its_origin_only_and_leaves_no_origin_there(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    hosts.source.set_origin(web, Origin(host="host-c", left_at=T0))
    record, told = move_back(tmp_path, hosts, web)
    assert record.state is MoveState.DONE and record.destination == "host-c"
    home = hosts.third.peek_vm(web)
    assert home is not None and home.state is VmState.RUNNING and home.origin is None
    assert hosts.destination.calls == [], "host-b, the first peer, was never asked"
    assert [r.destination for r in told.moves] == ["host-c"]


def test_a_move_back_its_origin_refuses_leaves_the_vm_running_here(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    hosts.third.inject_error("start_vm", HypervisorError("host-c: cannot start"), times=100)
    record, told = move_back(tmp_path, hosts, web)
    assert record.state is MoveState.RESTORED_ON_SOURCE
    here = hosts.source.peek_vm(web)
    assert here is not None and here.state is VmState.RUNNING
    assert hosts.destination.calls == [], "no other host is tried for a move back"
    assert [r.vm_uuid for r, _ in told.failures] == [web]


def test_the_service_offers_returns_as_a_planned_incident_of_those_vms_only(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    try:
        web = world.add_vm("web", "acme", 30)
        world.add_vm("db", "acme", 30)  # its own VM: stays
        incident_id = world.service.offer_returns({web: "host-b"})
        assert incident_id is not None and world.service.offer_returns({web: "host-b"}) is None
        [(kind, _, details)] = world.notifier.sent
        incident = details["incident"]
        assert kind == "evacuation_scheduled" and isinstance(incident, Incident) and incident.planned
        assert [(r.source, r.sensor) for r in incident.reasons] == [("maintenance", "move_back")]
        assert "host-b" in incident.reasons[0].message
        assert world.engine.record(web).return_to == "host-b"  # type: ignore[union-attr]
        assert [r.return_to for r in world.ledger.records(incident_id)] == ["host-b"]
        world.service.on_verdict(verdict(Severity.SEVERE))  # sick meanwhile: the move back goes on first
        world.timers.advance(world.timers.pending()[web])
        world.wait_moved(1)
        world.service.on_verdict(verdict(Severity.SEVERE))
        assert world.ledger.open_incident() is None, "a planned incident ends with its moves, sick or not"
        world.service.on_verdict(verdict(Severity.SEVERE))
        opened = world.ledger.open_incident()
        assert opened is not None and not opened.planned, "then the sick host evacuates what is left"
    finally:
        world.service.stop()
        world.journal.close()


_OLD_MOVES = """CREATE TABLE moves (
    vm_uuid TEXT PRIMARY KEY, vm_name TEXT NOT NULL, tenant TEXT, source TEXT NOT NULL, destination TEXT,
    state TEXT NOT NULL, phase TEXT NOT NULL, step TEXT, start_on_destination INTEGER,
    may_restart_on_source INTEGER NOT NULL, deadline TEXT, attempt INTEGER NOT NULL, error TEXT,
    updated_at TEXT NOT NULL, grp TEXT, boot_order INTEGER NOT NULL, priority INTEGER NOT NULL);
CREATE TABLE move_history (id INTEGER PRIMARY KEY AUTOINCREMENT, vm_uuid TEXT NOT NULL, state TEXT NOT NULL,
    phase TEXT NOT NULL, step TEXT, destination TEXT, error TEXT, at TEXT NOT NULL);
INSERT INTO moves VALUES ('u1', 'web', 'acme', 'host-a', NULL, 'planned', 'entered', NULL, NULL, 1, NULL, 0,
    NULL, '2026-12-05T08:00:00+00:00', NULL, 0, 0);"""


def test_a_journal_an_older_version_wrote_is_read_and_gains_return_to(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_MOVES)
    assert [r.return_to for r in read_journal(path).records] == [None], "read-only, as it is"
    with Journal(path) as journal:
        old = journal.get("u1")
        assert old is not None and old.return_to is None
        journal.advance(old, MoveState.WAITING, Phase.ENTERED, T0, return_to="host-c")
    with Journal(path) as journal:
        assert journal.get("u1").return_to == "host-c"  # type: ignore[union-attr]
    assert [r.return_to for r in read_journal(path).records] == ["host-c"]


def test_a_ledger_an_older_version_wrote_gains_return_to(tmp_path: Path) -> None:
    path = tmp_path / "incident.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""CREATE TABLE scheduled_vms (
            incident_id TEXT NOT NULL, vm_uuid TEXT NOT NULL, tenant TEXT, vm_name TEXT NOT NULL,
            planned_deadline TEXT NOT NULL, deadline TEXT NOT NULL, latest_deadline TEXT,
            postponed_seconds INTEGER NOT NULL DEFAULT 0, outcome TEXT,
            PRIMARY KEY (incident_id, vm_uuid));""")
    with IncidentLedger(path) as ledger:
        ledger.open(Incident(incident_id="i1", severity=Severity.SEVERE, reasons=(), opened_at=T0),
                    [LedgerVm(vm_uuid="u1", vm_name="web", tenant="acme", deadline=T0, latest_deadline=None,
                              return_to="host-c"),
                     LedgerVm(vm_uuid="u2", vm_name="db", tenant="acme", deadline=T0, latest_deadline=None)],
                    {"acme": "e1"})  # fmt: skip
    with IncidentLedger(path) as ledger:
        assert {r.vm_uuid: r.return_to for r in ledger.records("i1")} == {"u1": "host-c", "u2": None}
