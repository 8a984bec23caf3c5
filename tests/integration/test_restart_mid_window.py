"""A daemon killed (SIGKILL) and restarted mid-window carries on the same incident, all real: libvirt, broker.

Two VMs wait out long windows on a hot host-a; the daemon dies twice and comes back each time while the host
stays hot. The tenant hears of the evacuation once; its replies, naming the first notice's event id, are
judged as before the restarts: ready moves a VM at once, a postpone is granted up to the latest deadline the
first notice gave, and both VMs end on host-b with their disks intact.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.incident.ledger import IncidentLedger
from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from notifiers.messages import EvacuationScheduled, EvacuationUpdated, Notice, VmEvacuated
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import host_replies_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant
from tests.fixtures.daemon import CONSECUTIVE, POLL_SECONDS, DaemonLog, Daemons, write_config

pytestmark = pytest.mark.integration

MIB = 1 << 20
WINDOW_SECONDS = 300  # long: the VMs still wait when the daemon dies
RESTARTS = 2


def _notices(client: TenantClient, seconds: float) -> list[Notice]:
    """Every notice that arrives within `seconds`."""
    got: list[Notice] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        notice = client.next_notice(min(left, 1.0))
        if notice is not None:
            got.append(notice)
    return got


def _next(client: TenantClient, kind: type[Any], seconds: float, seen: list[Notice]) -> Any:
    """The next notice of `kind`; every notice read on the way is kept in `seen`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        notice = client.next_notice(min(left, 1.0))
        if notice is not None:
            seen.append(notice)
            if isinstance(notice, kind):
                return notice
    raise AssertionError(f"no {kind.__name__} within {seconds} s; got {[type(n).__name__ for n in seen]}")


def _restarted(daemon: Daemons, log: DaemonLog, config: Path) -> DaemonLog:
    daemon.kill(log)
    again = daemon(config)
    again.wait_for("incident_resumed", 30)
    # Still hot: the restarted detector needs its samples again before it says severe, and then plans nothing.
    again.wait_for("host_verdict_changed", 30, severity="severe")
    time.sleep(POLL_SECONDS * (CONSECUTIVE + 2))
    assert again.matching("evacuation_planned") == [] and again.matching("incident_opened") == []
    return again


def test_a_daemon_killed_mid_window_carries_on_the_same_incident(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant], daemon: Daemons, broker_janitor: BrokerJanitor,
) -> None:  # fmt: skip
    host_a, host_b = clean_lab_hosts
    broker_janitor.queue(host_replies_queue("host-a", replies_exchange=broker_settings.replies_exchange))
    owner = make_tenant("restart")
    rng = random.Random(17)
    data = {name: rng.randbytes(MIB) for name in ("web", "db")}
    uuids = {name: create_vm(host_a.uri, host_a.pool, name=name, tenant=owner.name,
                             window_seconds=WINDOW_SECONDS, disk_bytes=16 * MIB, data=data[name],
                             mac=f"52:54:00:e2:e1:0{index}")
             for index, name in enumerate(("web", "db"))}  # fmt: skip
    sums = {name: sha256_of_volume(host_a.uri, host_a.pool, volume_name(name)) for name in uuids}
    sensor = HeatableHwmon(tmp_path / "sys", celsius=45)
    config = write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys")
    log = daemon(config)
    seen: list[Notice] = []
    exchange = broker_settings.replies_exchange
    with TenantClient(owner.url, owner.name, replies_exchange=exchange) as tenant:
        sensor.set_celsius(97)
        scheduled: EvacuationScheduled = _next(tenant, EvacuationScheduled, 30, seen)
        told = {vm.vm_uuid: vm for vm in scheduled.vms}
        assert set(told) == set(uuids.values()) and all(vm.latest_deadline for vm in told.values())

        for _ in range(RESTARTS):
            log = _restarted(daemon, log, config)
            seen += _notices(tenant, 2.0)
        assert [n for n in seen if not isinstance(n, EvacuationScheduled)] == [], "nothing else was said"

        # The ready names the first notice's event: it still is the pending evacuation's. Web moves at once.
        tenant.send_ready("host-a", uuids["web"], scheduled.event_id)
        moved_web: VmEvacuated = _next(tenant, VmEvacuated, 120, seen)
        assert moved_web.vm_uuid == uuids["web"] and moved_web.at < told[uuids["web"]].deadline

        # A postpone far beyond the cap is granted up to the latest deadline the first notice gave.
        tenant.send_postpone("host-a", uuids["db"], 7 * 24 * 3600 - 1, scheduled.event_id)
        postponed: EvacuationUpdated = _next(tenant, EvacuationUpdated, 30, seen)
        while postponed.cause != "postponed":
            postponed = _next(tenant, EvacuationUpdated, 30, seen)
        [db] = postponed.vms
        latest = told[uuids["db"]].latest_deadline
        assert (db.vm_uuid, db.deadline, db.latest_deadline) == (uuids["db"], latest, latest)

        tenant.send_ready("host-a", uuids["db"], scheduled.event_id)
        moved_db: VmEvacuated = _next(tenant, VmEvacuated, 120, seen)
        assert moved_db.vm_uuid == uuids["db"]

    # Told of the evacuation once: one event. A daemon SIGKILLed between the broker's confirm and the outbox's
    # delete sends that notice again when it restarts, and the contract says a notice may come twice, with
    # its event id (tenants drop what they handled): so a second copy must be the very same notice.
    assert [n for n in seen if isinstance(n, EvacuationScheduled) and n != scheduled] == []
    assert not any(log.matching("reply_refused")) and not any(log.matching("reply_rejected"))
    _check_deadlines_never_moved(tmp_path / "state" / "incident.sqlite", scheduled, uuids)
    _check_moved(host_a, host_b, uuids, sums)


def _check_deadlines_never_moved(path: Path, scheduled: EvacuationScheduled, uuids: dict[str, str]) -> None:
    """The ledger the restarted daemons read holds the first notice's planned and latest deadlines."""
    told = {vm.vm_uuid: vm for vm in scheduled.vms}
    with IncidentLedger(path) as ledger:
        incident = ledger.open_incident()
        assert incident is not None
        records = {r.vm_uuid: r for r in ledger.records(incident.incident_id)}
        assert ledger.event_for(next(iter(records.values())).tenant or "") == scheduled.event_id
    for uuid in uuids.values():
        assert records[uuid].planned_deadline == told[uuid].deadline
        assert records[uuid].latest_deadline == told[uuid].latest_deadline
        assert records[uuid].outcome == "moved"
    assert records[uuids["db"]].postponed_seconds == pytest.approx(
        (told[uuids["db"]].latest_deadline - told[uuids["db"]].deadline).total_seconds())  # type: ignore[operator]
    assert datetime.now(UTC) - records[uuids["web"]].deadline < timedelta(minutes=5), "web's ready: now"


def _check_moved(host_a: LabHost, host_b: LabHost, uuids: dict[str, str], sums: dict[str, str]) -> None:
    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as a, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:  # fmt: skip
        for name, uuid in uuids.items():
            there = b.find_vm(uuid)
            assert there is not None and there.state is VmState.RUNNING and a.find_vm(uuid) is None
            assert sha256_of_volume(host_b.uri, host_b.pool, volume_name(name)) == sums[name]
