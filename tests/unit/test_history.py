"""`evacuator history` over a journal the real engine filled (fake hosts) and a real incident ledger: what
each move shows, read while the journal is open for writing and from a file an older version wrote."""

from __future__ import annotations

import argparse
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from evacuator.cli import main as cli_main
from evacuator.commands.history import format_history, history, parse_since
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.incident.ledger import Incident, IncidentLedger, LedgerVm
from evacuator.incident.planner import PlannedMove
from evacuator.lab.vms import domain_xml
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.journal import Journal, read_journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from evacuator.wiring.moves import assemble_engine
from monitors.verdicts import Reason, Severity
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.outcomes import RecordedOutcomes

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
POOL = "evacuator"
DATA = b"evacuator" * 1000
MOVE_KEYS = {
    "vm_uuid", "vm_name", "tenant", "incident_id", "why", "source", "destination", "destinations_tried",
    "method", "outcome", "state", "error", "planned_at", "started_at", "ended_at", "duration_seconds",
    "bytes_copied", "downtime_seconds",
}  # fmt: skip
INCIDENT_KEYS = {"incident_id", "severity", "opened_at", "closed_at", "reasons", "vm_uuids"}
HOT = Reason(source="hwmon", sensor="coretemp-platform-coretemp.0/temp1", value=97.0, threshold=90.0,
             unit="celsius", message="Package id 0 at 97 °C, over 90 °C")  # fmt: skip


class Hosts:
    def __init__(self) -> None:
        self.source = FakeHypervisor(name="host-a")
        self.destination = FakeHypervisor(name="host-b")

    @contextmanager
    def open(self, name: str) -> Iterator[Hypervisor]:
        yield {"host-a": self.source, "host-b": self.destination}[name]

    def add_vm(self, name: str, state: VmState = VmState.RUNNING, vm_uuid: str | None = None) -> str:
        self.source.add_volume(POOL, f"{name}.raw", capacity_bytes=64 * 1024, data=DATA)
        xml = domain_xml(name=name, pool=POOL, volume=f"{name}.raw", mac="52:54:00:00:00:01",
                         facts=VmFacts(tenant="acme"), uuid=vm_uuid or str(uuid.uuid4()))  # fmt: skip
        return self.source.add_vm(xml, state=state).uuid


def _move(state_dir: Path, hosts: Hosts, names: dict[str, str], *, at: datetime,
          incident: Incident | None) -> dict[str, int]:  # fmt: skip
    """Plans the VMs at `at` (under `incident`, recorded in the ledger first, as the service does) and moves
    them with the real engine; the clock ticks one second per reading. Returns the bytes each move's report
    (its move_finished event) says it copied."""
    ticks = iter(range(10**6))
    if incident is not None:
        with IncidentLedger(state_dir / "incident.sqlite") as ledger:
            ledger.open(incident, [LedgerVm(vm_uuid=u, vm_name=n, tenant="acme", deadline=at,
                                            latest_deadline=None) for n, u in names.items()],
                        {"acme": f"event-{incident.incident_id}"})  # fmt: skip
    with Journal(state_dir / "journal.sqlite") as journal:
        engine = assemble_engine(
            EngineConfig(host="host-a", peers=("host-b",), retry_initial_seconds=0, move_attempts=1),
            MigrationTimings(shutdown_timeout_seconds=1), journal=journal, hypervisor=hosts.source,
            open_host=hosts.open, clock=lambda: at + timedelta(seconds=next(ticks)), sleep=lambda s: None,
        )  # fmt: skip
        engine.plan([PlannedMove(vm_uuid=u, vm_name=n, tenant="acme", window_seconds=0, deadline=at)
                     for n, u in names.items()], may_restart_on_source=True)  # fmt: skip
        with capture_logs() as logs:
            engine.start(timer_pending=lambda _: False, outcomes=RecordedOutcomes())
            assert engine.wait_idle(10)
            engine.stop()
    if incident is not None:  # healthy again: the service closes it
        with IncidentLedger(state_dir / "incident.sqlite") as ledger:
            ledger.close_incident(incident.incident_id, at + timedelta(minutes=5))
    return {e["vm_uuid"]: e["bytes_copied"] for e in logs if e["event"] == "move_finished"}


def _incident(at: datetime) -> Incident:
    return Incident(incident_id=str(uuid.uuid4()), severity=Severity.SEVERE, reasons=(HOT,), opened_at=at)


def test_a_done_move_shows_its_incident_hosts_bytes_and_downtime(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    incident = _incident(T0)
    copied = _move(tmp_path, hosts, {"web": web}, at=T0, incident=incident)

    incidents, moves = history(tmp_path, since=None)
    (row,) = moves
    assert [i.incident_id for i in incidents] == [incident.incident_id]
    assert incidents[0].reasons[0]["message"] == HOT.message and incidents[0].vm_uuids == [web]
    assert (row.vm_uuid, row.vm_name, row.tenant, row.source, row.destination) == (
        web, "web", "acme", "host-a", "host-b")
    assert (row.incident_id, row.method, row.outcome, row.error) == (
        incident.incident_id, "cold", "done", None)
    assert row.why == f"severe: {HOT.message}"
    assert row.bytes_copied == copied[web] >= len(DATA)
    assert row.planned_at == T0 and row.started_at is not None and row.ended_at is not None
    assert row.duration_seconds == (row.ended_at - row.started_at).total_seconds() > 0
    # Off after the quiesce step, running after the start step: both journaled, inside the move.
    assert row.downtime_seconds is not None and 0 < row.downtime_seconds < row.duration_seconds


def test_a_vm_that_was_off_has_no_downtime(tmp_path: Path) -> None:
    hosts = Hosts()
    idle = hosts.add_vm("idle", state=VmState.SHUT_OFF)
    copied = _move(tmp_path, hosts, {"idle": idle}, at=T0, incident=_incident(T0))
    (row,) = history(tmp_path, since=None)[1]
    assert row.outcome == "done" and row.downtime_seconds is None and row.bytes_copied == copied[idle] > 0


def test_a_vm_moved_away_twice_is_two_moves_each_under_its_own_incident(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    first, second = _incident(T0), _incident(T0 + timedelta(days=2))
    _move(tmp_path, hosts, {"web": web}, at=T0, incident=first)
    # It came back to host-a (an operator moved it) and host-a fell sick again two days later.
    back = Hosts()
    back.add_vm("web", vm_uuid=web)
    _move(tmp_path, back, {"web": web}, at=T0 + timedelta(days=2), incident=second)

    incidents, moves = history(tmp_path, since=None)
    assert [(m.incident_id, m.outcome, m.planned_at, m.destination) for m in moves] == [
        (first.incident_id, "done", T0, "host-b"),
        (second.incident_id, "done", T0 + timedelta(days=2), "host-b"),
    ]
    shown, recent = history(tmp_path, since=T0 + timedelta(days=1))
    assert [m.incident_id for m in recent] == [second.incident_id]
    assert [i.incident_id for i in shown] == [second.incident_id]
    assert [i.incident_id for i in incidents] == [first.incident_id, second.incident_id]


def test_an_unplaced_move_is_failed_with_its_reason_and_no_copy(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        planned = journal.put(_record("u1", MoveState.PLANNED, Phase.ENTERED, T0))
        journal.advance(planned, MoveState.FAILED, Phase.FAILED, T0 + timedelta(seconds=5),
                        error="no_capacity: no host has 4 GiB free")  # fmt: skip
    (row,) = history(tmp_path, since=None)[1]
    assert (row.outcome, row.error, row.destination, row.method) == (
        "failed", "no_capacity: no host has 4 GiB free", None, None)
    assert (row.incident_id, row.why, row.bytes_copied, row.downtime_seconds, row.duration_seconds) == (
        None, None, None, None, None)
    assert "no_capacity" in format_history("host-a", None, [], [row])


def test_history_reads_a_journal_the_daemon_holds_open_and_writes(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        planned = journal.put(_record("u1", MoveState.PLANNED, Phase.ENTERED, T0))
        assert [m.state for m in history(tmp_path, since=None)[1]] == ["planned"]
        later = T0 + timedelta(seconds=1)
        journal.advance(planned, MoveState.QUIESCING, Phase.STARTED, later, step="quiesce")
        (row,) = history(tmp_path, since=None)[1]
        assert (row.outcome, row.state, row.started_at) == ("in_progress", "quiescing", later)
        assert len(read_journal(tmp_path / "journal.sqlite").entries) == 2
        assert len(journal.history("u1")) == 2  # the writer goes on: the reader took no lock it keeps


# The journal's tables as the first version created them (before bytes_copied and start_on_destination).
_OLD_SCHEMA = """
CREATE TABLE moves (
    vm_uuid TEXT PRIMARY KEY, vm_name TEXT NOT NULL, tenant TEXT, source TEXT NOT NULL, destination TEXT,
    state TEXT NOT NULL, phase TEXT NOT NULL, step TEXT, start_on_destination INTEGER,
    may_restart_on_source INTEGER NOT NULL, deadline TEXT, attempt INTEGER NOT NULL, error TEXT,
    updated_at TEXT NOT NULL, grp TEXT, boot_order INTEGER NOT NULL, priority INTEGER NOT NULL
);
CREATE TABLE move_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, vm_uuid TEXT NOT NULL, state TEXT NOT NULL, phase TEXT NOT NULL,
    step TEXT, destination TEXT, error TEXT, at TEXT NOT NULL
);
"""


def test_a_journal_an_older_version_wrote_still_reads_and_opens(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    old.execute("INSERT INTO moves VALUES ('u1', 'web', 'acme', 'host-a', 'host-b', 'done', 'finished', "
                "'clean_up', 1, 1, NULL, 0, NULL, ?, NULL, 0, 0)", (T0.isoformat(),))  # fmt: skip
    steps = [("planned", "entered", None, None), ("quiescing", "finished", "quiesce", "host-b"),
             ("starting", "finished", "start", "host-b"), ("done", "finished", "clean_up", "host-b")]
    for seconds, (state, phase, step, destination) in enumerate(steps):
        old.execute("INSERT INTO move_history (vm_uuid, state, phase, step, destination, error, at) "
                    "VALUES ('u1', ?, ?, ?, ?, NULL, ?)",
                    (state, phase, step, destination, (T0 + timedelta(seconds=10 * seconds)).isoformat()))
    old.commit()
    old.close()

    (row,) = history(tmp_path, since=None)[1]
    # Not recorded then: no bytes; the run state comes from the VM's record, so the downtime is known.
    assert (row.outcome, row.destination, row.bytes_copied, row.downtime_seconds) == (
        "done", "host-b", None, 10)
    with Journal(path) as journal:  # the daemon opens it, and writes the new columns from then on
        again = journal.put(_record("u1", MoveState.PLANNED, Phase.ENTERED, T0 + timedelta(days=1)))
        copying = journal.advance(again, MoveState.COPYING, Phase.STARTED, T0 + timedelta(days=1, seconds=1),
                                  step="copy_disks", destination="host-b")  # fmt: skip
        journal.advance(copying, MoveState.DONE, Phase.FINISHED, T0 + timedelta(days=1, seconds=9),
                        bytes_copied=4096)  # fmt: skip
    first, second = history(tmp_path, since=None)[1]
    assert (first.bytes_copied, second.bytes_copied) == (None, 4096)


@pytest.mark.parametrize(("text", "expected"), [
    ("24h", timedelta(hours=24)), ("7d", timedelta(days=7)), ("90m", timedelta(minutes=90)),
    ("30s", timedelta(seconds=30)), ("2w", timedelta(weeks=2)), ("1.5h", timedelta(minutes=90)),
    ("2026-12-01T08:00:00+01:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
])  # fmt: skip
def test_since_is_a_duration_or_an_iso_time(text: str, expected: datetime | timedelta) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "-1h", "7 days", ""])
def test_a_bad_since_is_refused_as_a_bad_argument(text: str, tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="neither a duration"):
        parse_since(text)
    with pytest.raises(SystemExit) as exited:
        cli_main(["history", "--config", str(tmp_path / "none.yaml"), "--since", text])
    assert exited.value.code == 2


def test_the_command_prints_the_documented_json_and_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = Hosts()
    web, db = hosts.add_vm("web"), hosts.add_vm("db")
    incident = _incident(T0)
    _move(tmp_path / "state", hosts, {"web": web, "db": db}, at=T0, incident=incident)
    config = _config(tmp_path)

    assert cli_main(["history", "--config", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["schema_version"], shown["host"], shown["since"]) == (1, "host-a", None)
    assert [set(i) for i in shown["incidents"]] == [INCIDENT_KEYS]
    assert all(set(m) == MOVE_KEYS for m in shown["moves"]) and len(shown["moves"]) == 2
    assert {(m["vm_name"], m["outcome"], m["destination"]) for m in shown["moves"]} == {
        ("web", "done", "host-b"), ("db", "done", "host-b")}
    planned = [datetime.fromisoformat(m["planned_at"]) for m in shown["moves"]]
    assert all(T0 <= at < T0 + timedelta(minutes=1) for at in planned)

    assert cli_main(["history", "--config", str(config), "--since", "2026-11-25T05:00:00Z"]) == 0
    assert capsys.readouterr().out.strip() == (
        "no incident and no move journaled on host-a since 2026-11-25 05:00:00")
    assert cli_main(["history", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == (f"incident {incident.incident_id} severe, opened 2026-11-25 04:00:00, "
                        "closed 2026-11-25 04:05:00")
    assert table[1] == f"  why: severe: {HOT.message}"
    assert table[2].split() == ["WHEN", "(UTC)", "VM", "TENANT", "FROM", "TO", "METHOD", "OUTCOME",
                                "DURATION", "COPIED", "DOWNTIME"]  # fmt: skip
    assert [line.split()[2:8] for line in table[3:]] == [
        ["web", "acme", "host-a", "host-b", "cold", "done"],  # planned first
        ["db", "acme", "host-a", "host-b", "cold", "done"],
    ]
    copied = {m["vm_name"]: m["bytes_copied"] for m in shown["moves"]}
    assert [line.split()[-3:-1] for line in table[3:]] == [
        [f"{copied['web'] / 1024:.1f}", "KiB"], [f"{copied['db'] / 1024:.1f}", "KiB"]]


def test_without_a_journal_it_says_so_and_shows_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["history", "--config", str(_config(tmp_path)), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"schema_version": 1, "host": "host-a", "since": None, "incidents": [],
                               "moves": []}  # fmt: skip
    assert "no move journal in" in err and not (tmp_path / "state").exists()


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump({
        "host": {"name": "host-a", "libvirt_uri": "test:///default", "migration_address": "127.0.0.1"},
        "peers": [{"name": "host-b", "libvirt_uri": "test:///default"}],
        "state_dir": str(tmp_path / "state"),
    }), encoding="utf-8")  # fmt: skip
    return path


def _record(vm_uuid: str, state: MoveState, phase: Phase, at: datetime) -> MoveRecord:
    return MoveRecord(vm_uuid=vm_uuid, vm_name="web", tenant="acme", source="host-a", destination=None,
                      state=state, phase=phase, step=None, start_on_destination=True,
                      may_restart_on_source=True, deadline=at, attempt=0, error=None, updated_at=at)
