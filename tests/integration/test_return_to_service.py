"""Return to service, all real (issue 20): two lab hosts, each with its own daemon on the host view. host-a
runs hot and its VMs go to host-b, which records where they came from. host-a cools down, stays severe for
its detector's hold-down, then is healthy and in service: a destination again. With move_back on, host-b
offers the VMs back through the tenant contract (evacuation_scheduled with severity maintenance and a
move_back reason, each VM's window, ready), and they run on host-a again, once: nothing moves after that."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmInfo, VmState
from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm
from notifiers.messages import EvacuationScheduled, VmEvacuated
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import host_replies_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant, next_notice_of
from tests.fixtures.daemon import DaemonLog, Daemons, write_config

pytestmark = pytest.mark.integration

MIB = 1 << 20
HOLD_DOWN_SECONDS = 6
WINDOW_SECONDS = 4  # db registered none: it gets this, at each move
HOT_CELSIUS, COOL_CELSIUS = 97, 45


def _config(tmp: Path, host: LabHost, peer: LabHost, broker: BrokerSettings, *, move_back: bool) -> Path:
    (tmp / host.name).mkdir(exist_ok=True)
    return write_config(
        tmp / host.name, host, peer, broker, tmp / host.name / "sys",
        evacuation={"default_window_seconds": WINDOW_SECONDS, "shutdown_timeout_seconds": 3},
        # The lab machine has 2 cores, shared by both hosts: each offers its guests more vCPUs than it has.
        placement={"use_host_view": True, "guest_vcpus": 16},
        monitors={"hold_down_seconds": HOLD_DOWN_SECONDS},
        more={
            "host_view": {"interval_seconds": 1, "stale_after_seconds": 4},
            # Two hosts: one evacuates at a time; no spacing, no reserve, so the guards decide nothing here.
            "guards": {"min_start_spacing_seconds": 0, "min_free_share": 0},
            "return_to_service": {"move_back": move_back},
        },
    )  # fmt: skip


def _where(hosts: tuple[LabHost, ...], uuid: str) -> dict[str, VmInfo]:
    found = {}
    for host in hosts:
        with open_libvirt_host(host.name, host.uri, host.pool) as opened:
            vm = opened.find_vm(uuid)
            if vm is not None:
                found[host.name] = vm
    return found


def _two_daemons(
    tmp_path: Path, hosts: tuple[LabHost, ...], broker: BrokerSettings, daemon: Daemons, *, move_back: bool
) -> tuple[dict[str, HeatableHwmon], dict[str, DaemonLog]]:
    host_a, host_b = hosts
    sensors = {h.name: HeatableHwmon(tmp_path / h.name / "sys", celsius=COOL_CELSIUS) for h in hosts}
    configs = {host_a.name: _config(tmp_path, host_a, host_b, broker, move_back=move_back),
               host_b.name: _config(tmp_path, host_b, host_a, broker, move_back=move_back)}  # fmt: skip
    logs = {name: daemon(config) for name, config in configs.items()}
    return sensors, logs


def _tenant_with_vms_on_a(
    hosts: tuple[LabHost, ...], broker: BrokerSettings, make_tenant: Callable[[str], LabTenant],
    janitor: BrokerJanitor, *, mac: int,
) -> tuple[LabTenant, dict[str, str]]:
    """A tenant with web (window 300 s, its tenant answers ready) and db (no window of its own) on host-a."""
    for host in hosts:
        janitor.queue(host_replies_queue(host.name, replies_exchange=broker.replies_exchange))
    owner, host_a = make_tenant("acme"), hosts[0]
    uuids = {name: create_vm(host_a.uri, host_a.pool, name=name, tenant=owner.name, window_seconds=window,
                             disk_bytes=4 * MIB, data=name.encode() * 1024,
                             mac=f"52:54:00:{mac:02x}:00:0{index}")
             for index, (name, window) in enumerate((("web", 300), ("db", None)))}  # fmt: skip
    return owner, uuids


def _evacuate_a(tenant: TenantClient, sensors: dict[str, HeatableHwmon], uuids: dict[str, str]) -> None:
    """host-a runs hot; the tenant says ready for web; both VMs run on host-b."""
    time.sleep(2)  # each daemon has heard the other's first state
    sensors["host-a"].set_celsius(HOT_CELSIUS)
    scheduled = next_notice_of(tenant, EvacuationScheduled, 30)
    assert scheduled.host == "host-a" and scheduled.severity == "severe"
    tenant.send_ready("host-a", uuids["web"], scheduled.event_id)
    moved = {next_notice_of(tenant, VmEvacuated, 90).vm_uuid: None for _ in uuids}
    assert set(moved) == set(uuids.values())


def test_a_recovered_host_is_held_down_then_a_destination_again(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant], daemon: Daemons, broker_janitor: BrokerJanitor,
) -> None:  # fmt: skip
    """move_back off: host-a's VMs stay on host-b after it recovers; once host-a is in service (not before
    its hold-down ran out) and host-b runs hot in turn, host-b's VMs go to host-a."""
    owner, uuids = _tenant_with_vms_on_a(clean_lab_hosts, broker_settings, make_tenant, broker_janitor,
                                         mac=0xE1)
    with TenantClient(owner.url, owner.name, replies_exchange=broker_settings.replies_exchange) as tenant:
        sensors, logs = _two_daemons(tmp_path, clean_lab_hosts, broker_settings, daemon, move_back=False)
        _evacuate_a(tenant, sensors, uuids)
        for uuid in uuids.values():
            on_b = _where(clean_lab_hosts, uuid)
            assert list(on_b) == ["host-b"] and on_b["host-b"].state is VmState.RUNNING
            origin = on_b["host-b"].origin
            assert origin is not None and origin.host == "host-a", "host-b records where it came from"

        cooled = datetime.now(UTC)
        sensors["host-a"].set_celsius(COOL_CELSIUS)
        sick = logs["host-a"].wait_for("host_verdict_changed", 1, severity="severe")["at"]
        healthy = logs["host-a"].wait_for("host_verdict_changed", HOLD_DOWN_SECONDS + 20, after=sick,
                                          severity="healthy")  # fmt: skip
        back = logs["host-a"].wait_for("host_in_service", 5, after=sick)
        held_seconds = (healthy["at"] - cooled).total_seconds()
        assert held_seconds >= HOLD_DOWN_SECONDS - 0.5, f"healthy {held_seconds:.1f} s after cooling down"
        assert (back["at"] - healthy["at"]).total_seconds() < 1
        time.sleep(3)
        assert logs["host-b"].matching("move_back_offered") == [], "move_back is off"

        sensors["host-b"].set_celsius(HOT_CELSIUS)
        scheduled = next_notice_of(tenant, EvacuationScheduled, 30)
        assert scheduled.host == "host-b"
        tenant.send_ready("host-b", uuids["web"], scheduled.event_id)
        arrived = {(n := next_notice_of(tenant, VmEvacuated, 90)).vm_uuid: n.to_host for _ in uuids}
    assert arrived == dict.fromkeys(uuids.values(), "host-a"), "the recovered host is a destination again"
    assert logs["host-b"].wait_for("destination_chosen", 1, destination="host-a")
    for uuid in uuids.values():
        where = _where(clean_lab_hosts, uuid)
        assert list(where) == ["host-a"] and where["host-a"].state is VmState.RUNNING


def test_with_move_back_the_vms_come_home_through_a_notice_and_their_windows(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant], daemon: Daemons, broker_janitor: BrokerJanitor,
) -> None:  # fmt: skip
    """move_back on: once host-a is in service, host-b offers its VMs back: the tenant hears
    evacuation_scheduled from host-b (maintenance, reason move_back), says ready for web (it moves at once),
    and db waits out its window; both run on host-a with no origin left, and nothing moves again."""
    owner, uuids = _tenant_with_vms_on_a(clean_lab_hosts, broker_settings, make_tenant, broker_janitor,
                                         mac=0xE2)
    with TenantClient(owner.url, owner.name, replies_exchange=broker_settings.replies_exchange) as tenant:
        sensors, logs = _two_daemons(tmp_path, clean_lab_hosts, broker_settings, daemon, move_back=True)
        _evacuate_a(tenant, sensors, uuids)
        sensors["host-a"].set_celsius(COOL_CELSIUS)
        sick = logs["host-a"].wait_for("host_verdict_changed", 1, severity="severe")["at"]
        back = logs["host-a"].wait_for("host_in_service", HOLD_DOWN_SECONDS + 30, after=sick)

        offer = next_notice_of(tenant, EvacuationScheduled, 30)
        assert offer.host == "host-b" and offer.severity == "maintenance"
        assert [(r.source, r.sensor) for r in offer.reasons] == [("maintenance", "move_back")]
        assert "host-a" in offer.reasons[0].message
        assert {vm.vm_uuid for vm in offer.vms} == set(uuids.values())
        offered = logs["host-b"].wait_for("move_back_offered", 1)
        assert offered["to_hosts"] == ["host-a"] and offered["at"] >= back["at"]
        windows = {vm.vm_uuid: (vm.deadline - offered["at"]).total_seconds() for vm in offer.vms}
        assert windows[uuids["db"]] == pytest.approx(WINDOW_SECONDS, abs=1.5), "db waits its window"
        tenant.send_ready("host-b", uuids["web"], offer.event_id)
        arrived = {(n := next_notice_of(tenant, VmEvacuated, 90)).vm_uuid: n.to_host for _ in uuids}
        time.sleep(4)  # several polls of both daemons: nothing offers anything again
    assert arrived == dict.fromkeys(uuids.values(), "host-a")
    for uuid in uuids.values():
        where = _where(clean_lab_hosts, uuid)
        assert list(where) == ["host-a"] and where["host-a"].state is VmState.RUNNING
        assert where["host-a"].origin is None, "a move back leaves no origin: it is never offered again"
    assert len(logs["host-b"].matching("move_back_offered")) == 1
    assert logs["host-a"].matching("move_back_offered") == []
