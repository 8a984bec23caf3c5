"""The admin's requests to the daemon and the maintenance flag (incident/admin.py), and the notice a drain
sends (severity maintenance)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from evacuator.incident.admin import MAINTENANCE_SOURCE, AdminStore
from evacuator.incident.ledger import Incident, ScheduledRecord
from evacuator.incident.notices import scheduled_notice
from monitors.verdicts import Reason, Severity

T0 = datetime(2026, 12, 5, 5, 0, tzinfo=UTC)


def test_a_request_is_taken_once_and_says_what_came_of_it_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "admin.sqlite"
    with AdminStore(path) as admin:
        first = admin.request("drain", reason="BIOS update", window_seconds=300, now=T0)
        second = admin.request("undrain", reason="undrain", window_seconds=None, now=T0)
    with AdminStore(path) as daemon_side:  # the daemon, maybe after a restart
        [drain, undrain] = daemon_side.untaken()
        assert (drain.request_id, drain.action, drain.window_seconds) == (first, "drain", 300)
        daemon_side.settle(drain, outcome="accepted", now=T0 + timedelta(seconds=1), incident_id="inc-1")
        assert [r.request_id for r in daemon_side.untaken()] == [second] and undrain.action == "undrain"
    with AdminStore(path) as cli_side:
        taken = cli_side.get(first)
        assert taken is not None and taken.outcome == "accepted" and taken.incident_id == "inc-1"
        assert taken.taken_at == T0 + timedelta(seconds=1) and cli_side.get(999) is None


def test_maintenance_is_kept_from_the_first_drain_until_undrain(tmp_path: Path) -> None:
    with AdminStore(tmp_path / "admin.sqlite") as admin:
        assert admin.maintenance() is None
        admin.set_maintenance("BIOS update", T0)
        admin.set_maintenance("again", T0 + timedelta(hours=1))  # still the first drain's
    with AdminStore(tmp_path / "admin.sqlite") as admin:
        kept = admin.maintenance()
        assert kept is not None and (kept.reason, kept.since) == ("BIOS update", T0)
        admin.set_maintenance(None, T0)
        assert admin.maintenance() is None


def test_a_drains_notice_says_maintenance_and_the_admins_reason() -> None:
    reason = Reason(source=MAINTENANCE_SOURCE, sensor="drain", value=None, threshold=None, unit="",
                    message="BIOS update")  # fmt: skip
    incident = Incident(incident_id="inc-1", severity=Severity.SEVERE, reasons=(reason,), opened_at=T0)
    vm = ScheduledRecord(incident_id="inc-1", vm_uuid="0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01", event_id=None,
                         tenant="acme", vm_name="web", severity=Severity.SEVERE, opened_at=T0,
                         planned_deadline=T0, deadline=T0, latest_deadline=None, postponed_seconds=0,
                         outcome=None)  # fmt: skip
    notice = scheduled_notice(host="hv-01", tenant="acme", event_id="6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60",
                              incident=incident, vms=[vm], replies_exchange="evacuator.replies",
                              answers_replies=True)  # fmt: skip
    assert notice.severity == "maintenance" and notice.reasons[0].source == "maintenance"
    assert notice.allowed_replies == ("ready", "postpone", "register")
    sick = Incident(incident_id="inc-2", severity=Severity.SEVERE, reasons=(), opened_at=T0)
    assert not sick.planned
