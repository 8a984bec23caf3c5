"""`evacuator status` over a state directory filled by the real stores: the verdict file, the ledger, the
journal and the admin's requests."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evacuator.commands.status import collect, render, run_status
from evacuator.incident.admin import AdminStore
from evacuator.incident.ledger import Incident, IncidentLedger, LedgerVm
from evacuator.incident.status_file import read_status, write_status
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from evacuator.settings import Settings, parse_settings
from monitors.verdicts import HostVerdict, Reason, Severity

T0 = datetime.now(UTC).replace(microsecond=0)
WEB, DB = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01", "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12"


def _settings(tmp_path: Path) -> Settings:
    return parse_settings(f"host: {{name: hv-01}}\npeers: [{{name: hv-02, libvirt_uri: 'qemu+tls://hv-02/system'}}]"
                          f"\ndata_channel: {{enabled: false}}\nstate_dir: {tmp_path}\n", Path("e.yaml"))


def _record(uuid: str, name: str, state: MoveState, step: str | None) -> MoveRecord:
    return MoveRecord(vm_uuid=uuid, vm_name=name, tenant="acme", source="hv-01",
                      destination="hv-02" if step else None, state=state, phase=Phase.ENTERED, step=step,
                      start_on_destination=True, may_restart_on_source=True, deadline=T0, attempt=0,
                      error=None, updated_at=T0)  # fmt: skip


def test_status_shows_the_verdict_the_incident_the_waiting_and_the_moving(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    hot = Reason(source="hwmon", sensor="Package id 0", value=97.0, threshold=90.0, unit="celsius",
                 message="Package id 0 at 97 °C, threshold 90 °C")  # fmt: skip
    write_status(tmp_path, HostVerdict(severity=Severity.SEVERE, reasons=(hot,), at=T0))
    with IncidentLedger(tmp_path / "incident.sqlite") as ledger:
        ledger.open(Incident(incident_id="inc-1", severity=Severity.SEVERE, reasons=(hot,), opened_at=T0),
                    [LedgerVm(vm_uuid=WEB, vm_name="web", tenant="acme", deadline=T0 + timedelta(seconds=300),
                              latest_deadline=None),
                     LedgerVm(vm_uuid=DB, vm_name="db", tenant="acme", deadline=T0, latest_deadline=None)],
                    {"acme": "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"})  # fmt: skip
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.put(_record(WEB, "web", MoveState.NOTIFIED, None))
        journal.put(_record(DB, "db", MoveState.COPYING, "copy_disks"))
    with AdminStore(tmp_path / "admin.sqlite") as admin:
        admin.request("undrain", reason="undrain", window_seconds=None, now=T0)
    found = collect(settings, T0 + timedelta(seconds=1))
    assert found["verdict"]["severity"] == "severe" and found["verdict"]["reasons"][0]["value"] == 97.0
    assert found["daemon"] == {"running": True, "pid": os.getpid(), "verdict_age_seconds": 1.0}
    assert found["incident"]["incident_id"] == "inc-1" and found["incident"]["severity"] == "severe"
    vms = {vm["vm_name"]: vm for vm in found["vms"]}
    assert vms["web"]["seconds_left"] == 299 and vms["web"]["state"] == "notified"
    moving = [(m["vm_name"], m["step"], m["destination"]) for m in found["moving"]]
    assert moving == [("db", "copy_disks", "hv-02")]
    assert [r["action"] for r in found["requests_waiting"]] == ["undrain"]
    text = render(found)
    assert "hv-01: severe" in text and "97 °C" in text and "copy_disks" in text and "not taken yet" in text


def test_a_daemon_that_wrote_no_fresh_verdict_is_reported_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path)
    assert run_status(settings, with_cloud=False, as_json=False) == 1
    assert "no verdict yet" in capsys.readouterr().out
    old = datetime.now(UTC) - timedelta(seconds=10 * settings.monitors.poll_interval_seconds)
    write_status(tmp_path, HostVerdict(severity=Severity.HEALTHY, reasons=(), at=old))
    assert run_status(settings, with_cloud=False, as_json=False) == 1
    assert "NOT RUNNING" in capsys.readouterr().out
    (tmp_path / "status.json").write_text("{half a file")
    assert read_status(tmp_path) is None
