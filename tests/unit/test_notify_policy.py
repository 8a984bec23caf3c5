"""Policy per severity, over fakes (issue 21): `notify` tells each tenant its VMs are on a sick host and moves
nothing; `evacuate` for moderate opens an incident a tenant hears of as moderate."""

from __future__ import annotations

from pathlib import Path

from evacuator.incident.approval import EvacuationPolicy
from monitors.verdicts import Severity
from tests.unit.test_service import World, verdict


def test_notify_tells_each_tenant_once_per_spell_and_again_when_worse_moving_nothing(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite",
                  evacuation=EvacuationPolicy(on_moderate="notify", on_severe="notify"))  # fmt: skip
    world.service.start()
    try:
        web, db = world.add_vm("web", "acme", 60), world.add_vm("db", "beta", 60)
        world.add_vm("orphan", None, 60)  # no tenant: nobody to tell
        for _ in range(3):
            world.service.on_verdict(verdict(Severity.MODERATE))
        told = [(kind, tenant, details) for kind, tenant, details in world.notifier.sent]
        assert [(kind, tenant) for kind, tenant, _ in told] == [("host_at_risk", "acme"),
                                                                ("host_at_risk", "beta")]
        assert told[0][2] == {"severity": "moderate", "vms": ((web, "web"),)}
        assert told[1][2] == {"severity": "moderate", "vms": ((db, "db"),)}
        world.service.on_verdict(verdict(Severity.SEVERE))  # worse: told again
        world.service.on_verdict(verdict(Severity.MODERATE))  # better, still sick: not again
        severities = [details["severity"] for _, _, details in world.notifier.sent]
        assert severities == ["moderate", "moderate", "severe", "severe"]
        assert world.timers.pending() == {} and not world.service.busy() and world.engine.record(web) is None
        assert world.ledger.open_incident() is None, "nothing is planned, nothing moves"
        world.service.on_verdict(verdict(Severity.HEALTHY))
        world.service.on_verdict(verdict(Severity.MODERATE))  # a new spell: told again
        assert len(world.notifier.sent) == 6
    finally:
        world.service.stop()
        world.journal.close()


def test_evacuate_on_moderate_opens_an_incident_its_tenants_hear_of_as_moderate(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite", evacuation=EvacuationPolicy(on_moderate="evacuate"))
    world.service.start()
    try:
        web = world.add_vm("web", "acme", 60)
        world.service.on_verdict(verdict(Severity.MODERATE))
        incident = world.ledger.open_incident()
        assert incident is not None and incident.severity is Severity.MODERATE and not incident.planned
        assert [kind for kind, _, _ in world.notifier.sent] == ["evacuation_scheduled"]
        assert web in world.timers.pending()
    finally:
        world.service.stop()
        world.journal.close()


def test_by_default_a_moderate_host_is_only_quarantined(tmp_path: Path) -> None:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    try:
        world.add_vm("web", "acme", 60)
        world.service.on_verdict(verdict(Severity.MODERATE))
        assert world.notifier.sent == [] and world.ledger.open_incident() is None
    finally:
        world.service.stop()
        world.journal.close()
