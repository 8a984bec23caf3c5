"""The incident ledger in SQLite: what a restarted daemon reads back is what it wrote before it stopped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from evacuator.incident.ledger import Incident, IncidentLedger, LedgerVm
from monitors.verdicts import Reason, Severity

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
HOT = Reason(source="hwmon", sensor="coretemp/temp1", value=97.5, threshold=90.0, unit="celsius",
             message="hot", severity=Severity.SEVERE)
STALE = Reason(source="edac", sensor="mc0", value=None, threshold=None, unit="errors", message="no data",
               severity=Severity.UNKNOWN)
INCIDENT = Incident(incident_id="i-1", severity=Severity.SEVERE, reasons=(HOT, STALE), opened_at=T0)
WEB = LedgerVm(vm_uuid="u-web", vm_name="web", tenant="acme", deadline=T0 + timedelta(seconds=600),
               latest_deadline=T0 + timedelta(seconds=2400))
DB = LedgerVm(vm_uuid="u-db", vm_name="db", tenant="acme", deadline=T0 + timedelta(seconds=300),
              latest_deadline=None)
ORPHAN = LedgerVm(vm_uuid="u-x", vm_name="x", tenant=None, deadline=T0, latest_deadline=None)


def test_an_incident_reads_back_whole_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "incident.sqlite"
    with IncidentLedger(path) as ledger:
        ledger.open(INCIDENT, [WEB, DB, ORPHAN], {"acme": "e-acme"})
    with IncidentLedger(path) as ledger:
        assert ledger.open_incident() == INCIDENT
        web = ledger.get("u-web")
        assert web is not None
        assert (web.event_id, web.tenant, web.severity, web.opened_at) == (
            "e-acme", "acme", Severity.SEVERE, T0)
        assert (web.planned_deadline, web.deadline, web.latest_deadline) == (WEB.deadline, WEB.deadline,
                                                                             WEB.latest_deadline)
        assert [r.vm_name for r in ledger.records("i-1")] == ["db", "web", "x"]
        orphan = ledger.get("u-x")
        assert orphan is not None and orphan.tenant is None and orphan.event_id is None
        assert ledger.event_for("acme") == "e-acme" and ledger.event_for("beta") is None


def test_postpones_are_summed_and_the_planned_and_latest_deadlines_never_move(tmp_path: Path) -> None:
    path = tmp_path / "incident.sqlite"
    with IncidentLedger(path) as ledger:
        ledger.open(INCIDENT, [WEB], {"acme": "e-acme"})
        record = ledger.get("u-web")
        assert record is not None
        record = ledger.reschedule(record, record.deadline + timedelta(seconds=120))
        ledger.reschedule(record, record.deadline + timedelta(seconds=60))
    with IncidentLedger(path) as ledger:
        again = ledger.get("u-web")
        assert again is not None
        assert again.deadline == WEB.deadline + timedelta(seconds=180) and again.postponed_seconds == 180
        assert again.planned_deadline == WEB.deadline and again.latest_deadline == WEB.latest_deadline


def test_which_notices_were_handed_over_and_how_each_move_ended_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "incident.sqlite"
    with IncidentLedger(path) as ledger:
        ledger.open(INCIDENT, [WEB, DB], {"acme": "e-acme", "beta": "e-beta"})
        ledger.scheduled_sent("i-1", "acme")
        db = ledger.get("u-db")
        assert db is not None
        ledger.settle(db, "failed")
    with IncidentLedger(path) as ledger:
        told = {t.tenant: (t.event_id, t.scheduled_sent, t.completed_sent) for t in ledger.tenants("i-1")}
        assert told == {"acme": ("e-acme", True, False), "beta": ("e-beta", False, False)}
        assert {r.vm_name: r.outcome for r in ledger.records("i-1")} == {"db": "failed", "web": None}
        ledger.completed_sent("i-1", "acme")
        assert [t.completed_sent for t in ledger.tenants("i-1")] == [True, False]


def test_a_closed_incident_is_no_longer_open_and_a_later_one_is(tmp_path: Path) -> None:
    with IncidentLedger(tmp_path / "incident.sqlite") as ledger:
        ledger.open(INCIDENT, [WEB], {"acme": "e-1"})
        ledger.close_incident("i-1", T0 + timedelta(hours=1))
        assert ledger.open_incident() is None and ledger.get("u-web") is None
        assert ledger.event_for("acme") is None
        later = Incident(incident_id="i-2", severity=Severity.FAILED, reasons=(),
                         opened_at=T0 + timedelta(days=1))
        ledger.open(later, [WEB], {"acme": "e-2"})
        assert ledger.open_incident() == later
        web = ledger.get("u-web")
        assert web is not None and (web.incident_id, web.event_id) == ("i-2", "e-2")
