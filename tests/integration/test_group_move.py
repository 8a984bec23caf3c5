"""Integration, all real: a 2-VM consistency group moves all or nothing and starts in its boot order."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.incident.planner import PlannedMove
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveState
from evacuator.wiring.moves import assemble_engine

pytestmark = pytest.mark.integration

MIB = 1 << 20
# Only host-a has this file (its private /var/lib/libvirt): a VM that uses it cannot start on host-b.
SEED = "/var/lib/libvirt/images/group-seed.img"
CDROM = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{SEED}'/>"
         "<target dev='sda' bus='sata'/><readonly/></disk>")


def _run(tmp: Path, hosts: tuple[LabHost, ...], vms: dict[str, str]) -> tuple[Journal, dict[str, MoveState]]:
    by_name = {host.name: host for host in hosts}

    @contextmanager
    def open_host(name: str) -> Iterator[Hypervisor]:
        with open_libvirt_host(name, by_name[name].uri, by_name[name].pool) as host:
            yield host

    journal = Journal(tmp / "journal.sqlite")
    with open_libvirt_host("host-a", by_name["host-a"].uri, by_name["host-a"].pool) as own:
        engine = assemble_engine(
            EngineConfig(host="host-a", peers=("host-b",), move_attempts=1),
            MigrationTimings(shutdown_timeout_seconds=0.3),
            journal=journal, hypervisor=own, open_host=open_host, clock=lambda: datetime.now(UTC),
            sleep=time.sleep,
        )  # fmt: skip
        now = datetime.now(UTC)
        engine.plan([PlannedMove(vm_uuid=u, vm_name=n, tenant="acme", window_seconds=0, deadline=now)
                     for n, u in vms.items()], may_restart_on_source=True)
        engine.submit(vms["app"])  # one member's window closes: the group moves as one
        engine.start(timer_pending=lambda _: True)
        assert engine.wait_idle(120)
        engine.stop()
    states = {}
    for name, vm_uuid in vms.items():
        record = journal.get(vm_uuid)
        assert record is not None
        states[name] = record.state
    return journal, states


def _group(host_a: LabHost, *, app_devices: str = "") -> tuple[dict[str, str], dict[str, str]]:
    rng = random.Random(11)
    vms, sums = {}, {}
    # Named against their boot order, so that starting them by name would be the wrong order.
    for index, (name, boot_order) in enumerate((("app", 2), ("db", 1))):
        vms[name] = create_vm(
            host_a.uri, host_a.pool, name=name, tenant="acme", window_seconds=0, disk_bytes=4 * MIB,
            data=rng.randbytes(MIB), mac=f"52:54:00:9a:00:0{index}",
            facts=VmFacts(tenant="acme", group="shop", boot_order=boot_order),
            extra_devices=app_devices if name == "app" else "",
        )  # fmt: skip
        sums[name] = sha256_of_volume(host_a.uri, host_a.pool, volume_name(name))
    return vms, sums


def _states(host: LabHost) -> dict[str, VmState]:
    with open_libvirt_host(host.name, host.uri, host.pool) as opened:
        return {vm.name: vm.state for vm in opened.list_vms()}


def test_group_moves_together_and_starts_in_boot_order(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...]
) -> None:
    host_a, host_b = clean_lab_hosts
    vms, sums = _group(host_a)
    journal, states = _run(tmp_path, clean_lab_hosts, vms)
    journal.close()
    assert states == {"app": MoveState.DONE, "db": MoveState.DONE}
    assert _states(host_a) == {} and _states(host_b) == {"app": VmState.RUNNING, "db": VmState.RUNNING}
    for name in vms:
        assert sha256_of_volume(host_b.uri, host_b.pool, volume_name(name)) == sums[name]
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        rows = db.execute("SELECT vm_uuid, step, phase FROM move_history WHERE step IN ('quiesce', 'start') "
                          "ORDER BY id").fetchall()
    names = {u: n for n, u in vms.items()}
    events = [(names[u], step, phase) for u, step, phase in rows]
    # Both asked to shut down before either is done; db started (and verified) before app starts.
    assert set(events[:2]) == {("app", "quiesce", "started"), ("db", "quiesce", "started")}
    starts = [name for name, step, phase in events if step == "start" and phase == "finished"]
    assert starts == ["db", "app"]
    print("\ngroup journal:", events)


def test_group_member_refused_on_the_destination_brings_the_whole_group_back(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...]
) -> None:
    host_a, host_b = clean_lab_hosts
    seed = host_a.root / "lib" / "images" / "group-seed.img"
    seed.parent.mkdir(parents=True, exist_ok=True)
    seed.write_bytes(bytes(MIB))
    vms, sums = _group(host_a, app_devices=CDROM)
    journal, states = _run(tmp_path, clean_lab_hosts, vms)
    journal.close()
    assert states == {"app": MoveState.RESTORED_ON_SOURCE, "db": MoveState.RESTORED_ON_SOURCE}
    assert _states(host_a) == {"app": VmState.RUNNING, "db": VmState.RUNNING} and _states(host_b) == {}
    for name in vms:
        assert sha256_of_volume(host_a.uri, host_a.pool, volume_name(name)) == sums[name]
    with open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:
        assert all(b.find_volume(host_b.pool, volume_name(name)) is None for name in vms)
