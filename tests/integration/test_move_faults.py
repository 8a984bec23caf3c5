"""Integration, all real: destination faults (pool full, start refused, daemon gone mid-copy) roll back."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.incident.planner import PlannedMove
from evacuator.lab.hosts import LabHost, LabHosts, pool_volumes
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.engine import MoveEngine
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from evacuator.transfer.chunks import Chunk
from evacuator.wiring.moves import assemble_engine
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.outcomes import RecordedOutcomes
from tests.fixtures.chunk_faults import acting_after_first_mib

pytestmark = pytest.mark.integration

MIB = 1 << 20


class KillsDuringUpload:
    """host-c as the engine sees it, except that its daemon stops after the first MiB of a disk upload
    (or, with `hang`, freezes: SIGSTOP, as a wedged daemon or a dead link looks to a client)."""

    def __init__(self, host: LibvirtHost, lab: LabHosts, *, hang: bool = False) -> None:
        self._host, self._lab, self._hang = host, lab, hang

    def __getattr__(self, name: str) -> object:
        return getattr(self._host, name)

    def write_volume(self, pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        def kill() -> None:
            if self._hang:
                os.kill(_libvirtd_pid(_by_name(self._lab)["host-c"]), signal.SIGSTOP)
            else:
                self._lab.stop_host("host-c")

        return self._host.write_volume(pool, volume, acting_after_first_mib(chunks, kill))


def _libvirtd_pid(host: LabHost) -> int:
    return int((host.root / "run" / "libvirtd.pid").read_text())


def _by_name(lab: LabHosts) -> dict[str, LabHost]:
    return {host.name: host for host in lab.hosts}


def _engine(
    lab: LabHosts, journal: Journal, peers: tuple[str, ...], *, kill_mid_copy: bool = False,
    hang_mid_copy: bool = False,
) -> MoveEngine:
    hosts = _by_name(lab)

    @contextmanager
    def open_host(name: str) -> Iterator[Hypervisor]:
        host = hosts[name]
        # Short keepalive and open timeout: a frozen host-c must fail the move in seconds, not minutes.
        with open_libvirt_host(name, host.uri, host.pool, keepalive_interval_seconds=1, keepalive_count=2,
                               open_timeout_seconds=3) as opened:
            if (kill_mid_copy or hang_mid_copy) and name == "host-c":
                yield KillsDuringUpload(opened, lab, hang=hang_mid_copy)  # type: ignore[misc]
            else:
                yield opened

    return assemble_engine(
        EngineConfig(host="host-a", peers=peers, move_attempts=2, retry_initial_seconds=0.1,
                     retry_max_seconds=0.2),
        MigrationTimings(shutdown_timeout_seconds=0.3),
        # Every move here is planned first: the engine never needs this host's own view to adopt one.
        journal=journal, hypervisor=FakeHypervisor(name="host-a"), open_host=open_host,
        clock=lambda: datetime.now(UTC), sleep=time.sleep,
    )  # fmt: skip


def _move(tmp: Path, lab: LabHosts, vm_uuid: str, peers: tuple[str, ...], *, kill_mid_copy: bool = False,
          hang_mid_copy: bool = False) -> tuple[MoveRecord, RecordedOutcomes, list[MoveState]]:
    told = RecordedOutcomes()
    with Journal(tmp / "journal.sqlite") as journal:
        engine = _engine(lab, journal, peers, kill_mid_copy=kill_mid_copy, hang_mid_copy=hang_mid_copy)
        engine.plan([PlannedMove(vm_uuid=vm_uuid, vm_name="vm", tenant="acme", window_seconds=0,
                                 deadline=datetime.now(UTC))], may_restart_on_source=True)
        engine.start(timer_pending=lambda _: False, outcomes=told)
        assert engine.wait_idle(120)
        engine.stop()
        record = journal.get(vm_uuid)
        states = [state for state, _, _ in journal.history(vm_uuid)]
    assert record is not None
    return record, told, states


def _vm(lab: LabHosts, name: str, data_bytes: int, extra_devices: str = "") -> tuple[str, str]:
    host_a = _by_name(lab)["host-a"]
    data = random.Random(name).randbytes(data_bytes)
    uuid = create_vm(host_a.uri, host_a.pool, name=name, tenant="acme", window_seconds=0,
                     disk_bytes=2 * data_bytes, data=data, mac="52:54:00:fa:01:01",
                     extra_devices=extra_devices)
    return uuid, hashlib.sha256(data + bytes(data_bytes)).hexdigest()


def _where(lab: LabHosts, uuid: str) -> dict[str, VmState]:
    found = {}
    for host in lab.hosts:
        with open_libvirt_host(host.name, host.uri, host.pool) as opened:
            vm = opened.find_vm(uuid)
            if vm is not None:
                found[host.name] = vm.state
    return found


def test_pool_full_on_the_first_candidate_moves_the_vm_to_the_next(
    tmp_path: Path, clean_fault_lab: LabHosts
) -> None:
    uuid, sha = _vm(clean_fault_lab, "roomy", 8 * MIB)  # 8 MiB of data: host-b's pool holds 4
    record, told, states = _move(tmp_path, clean_fault_lab, uuid, ("host-b", "host-c"))
    hosts = _by_name(clean_fault_lab)
    assert record.state is MoveState.DONE and record.destination == "host-c"
    assert MoveState.ROLLING_BACK in states
    assert _where(clean_fault_lab, uuid) == {"host-c": VmState.RUNNING}
    assert sha256_of_volume(hosts["host-c"].uri, hosts["host-c"].pool, volume_name("roomy")) == sha
    assert pool_volumes(hosts["host-a"]) == [] and pool_volumes(hosts["host-b"]) == []
    assert [r.destination for r in told.moves] == ["host-c"] and told.failures == []


def test_pool_full_on_the_only_candidate_restores_the_vm_on_its_source(
    tmp_path: Path, clean_fault_lab: LabHosts
) -> None:
    uuid, sha = _vm(clean_fault_lab, "bulky", 8 * MIB)
    record, told, states = _move(tmp_path, clean_fault_lab, uuid, ("host-b",))
    hosts = _by_name(clean_fault_lab)
    assert record.state is MoveState.RESTORED_ON_SOURCE and record.phase is Phase.FINISHED
    assert states[-2:] == [MoveState.ROLLING_BACK, MoveState.RESTORED_ON_SOURCE]
    assert _where(clean_fault_lab, uuid) == {"host-a": VmState.RUNNING}
    assert sha256_of_volume(hosts["host-a"].uri, hosts["host-a"].pool, volume_name("bulky")) == sha
    assert pool_volumes(hosts["host-b"]) == []
    assert [(r.vm_uuid, r.state) for r, _ in told.failures] == [(uuid, MoveState.RESTORED_ON_SOURCE)]


def test_start_refused_on_the_destination_restores_the_vm_on_its_source(
    tmp_path: Path, clean_fault_lab: LabHosts
) -> None:
    hosts = _by_name(clean_fault_lab)
    # A file only host-a has (its private /var/lib/libvirt): host-c defines the VM but cannot start it.
    seed = hosts["host-a"].root / "lib" / "images" / "seed.img"
    seed.parent.mkdir(parents=True, exist_ok=True)
    seed.write_bytes(bytes(MIB))
    cdrom = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             "<source file='/var/lib/libvirt/images/seed.img'/><target dev='sda' bus='sata'/>"
             "<readonly/></disk>")
    uuid, sha = _vm(clean_fault_lab, "picky", MIB, extra_devices=cdrom)
    record, told, _ = _move(tmp_path, clean_fault_lab, uuid, ("host-c",))
    assert record.state is MoveState.RESTORED_ON_SOURCE, record
    assert "start" in (record.error or "")
    assert _where(clean_fault_lab, uuid) == {"host-a": VmState.RUNNING}
    assert pool_volumes(hosts["host-c"]) == []
    assert sha256_of_volume(hosts["host-a"].uri, hosts["host-a"].pool, volume_name("picky")) == sha
    assert told.failures and told.failures[0][0].vm_uuid == uuid


def test_destination_daemon_stopped_mid_copy_restores_the_vm_then_a_later_move_succeeds(
    tmp_path: Path, clean_fault_lab: LabHosts
) -> None:
    hosts = _by_name(clean_fault_lab)
    uuid, sha = _vm(clean_fault_lab, "stranded", 16 * MIB)
    record, told, _ = _move(tmp_path, clean_fault_lab, uuid, ("host-c",), kill_mid_copy=True)
    assert record.state is MoveState.RESTORED_ON_SOURCE, record
    assert [r.state for r, _ in told.failures] == [MoveState.RESTORED_ON_SOURCE]
    assert "could not be cleaned" in (record.error or ""), "the journal names the leftover on host-c"
    clean_fault_lab.start()  # host-c comes back, with the partial copy in its pool
    assert _where(clean_fault_lab, uuid) == {"host-a": VmState.RUNNING}
    assert sha256_of_volume(hosts["host-a"].uri, hosts["host-a"].pool, volume_name("stranded")) == sha

    again, _, _ = _move(tmp_path, clean_fault_lab, uuid, ("host-c",))
    assert again.state is MoveState.DONE and _where(clean_fault_lab, uuid) == {"host-c": VmState.RUNNING}
    assert pool_volumes(hosts["host-c"]) == [volume_name("stranded")] and pool_volumes(hosts["host-a"]) == []
    assert sha256_of_volume(hosts["host-c"].uri, hosts["host-c"].pool, volume_name("stranded")) == sha


def test_destination_frozen_mid_copy_times_out_and_restores_the_vm(
    tmp_path: Path, clean_fault_lab: LabHosts
) -> None:
    hosts = _by_name(clean_fault_lab)
    uuid, sha = _vm(clean_fault_lab, "frozen", 16 * MIB)
    began = time.monotonic()
    try:
        record, told, _ = _move(tmp_path, clean_fault_lab, uuid, ("host-c",), hang_mid_copy=True)
    finally:
        os.kill(_libvirtd_pid(hosts["host-c"]), signal.SIGCONT)
    seconds = time.monotonic() - began
    assert record.state is MoveState.RESTORED_ON_SOURCE, record
    assert seconds < 60, f"a frozen destination held the move {seconds:.0f} s"
    assert _where(clean_fault_lab, uuid) == {"host-a": VmState.RUNNING}
    assert sha256_of_volume(hosts["host-a"].uri, hosts["host-a"].pool, volume_name("frozen")) == sha
    assert [r.state for r, _ in told.failures] == [MoveState.RESTORED_ON_SOURCE]
    print(f"\nfrozen destination: move failed and VM restored on its source in {seconds:.1f} s")
