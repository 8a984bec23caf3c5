"""Two sick hosts evacuate at once towards one destination with room for only part of their VMs, on real
libvirt and the real broker: host-a and host-b both severe, two VMs each; host-c offers room for two. Both
movers plan over the same view, which shows host-c's room for two to each of them; host-c's daemon, the one
place that sees every claim, keeps it within its room: two VMs land there, the other two stay running on
their sources and their tenants hear no_capacity. No claim is left behind."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from evacuator.hypervisor.libvirt.room import LibvirtRoomReader
from evacuator.hypervisor.model import VmState
from evacuator.hypervisor.room import RoomCaps
from evacuator.lab.hosts import LabHosts
from evacuator.lab.vms import MEMORY_MIB, create_vm
from evacuator.placement.model import Verdict
from notifiers.settings import BrokerSettings
from tests.fakes.outcomes import RecordedOutcomes
from tests.fixtures.cloud import MIB, evacuate, host_daemon, lab_opener, recording_claims, wait_until_healthy

pytestmark = pytest.mark.integration

VM_BYTES = MEMORY_MIB * MIB
# Two lab VMs and a half: less the 5% reserve, room for two and not three.
CAPS = {"host-a": RoomCaps(), "host-b": RoomCaps(),
        "host-c": RoomCaps(guest_memory_bytes=5 * VM_BYTES // 2, guest_vcpus=16)}


def test_two_sources_at_once_never_overfill_the_one_destination(
    tmp_path: Path, clean_fault_lab: LabHosts, broker_settings: BrokerSettings
) -> None:
    lab = clean_fault_lab
    hosts = {h.name: h for h in lab.hosts}
    vms = {source: {create_vm(hosts[source].uri, hosts[source].pool, name=f"{source}-vm{i}", tenant="acme",
                              window_seconds=0, disk_bytes=MIB, data=b"y" * 4096,
                              mac=f"52:54:00:fc:{index:02x}:0{i}"): f"{source}-vm{i}" for i in range(2)}
           for index, source in enumerate(("host-a", "host-b"))}  # fmt: skip
    told = {source: RecordedOutcomes() for source in vms}
    c_room = LibvirtRoomReader(name="host-c", uri=hosts["host-c"].uri, pool=hosts["host-c"].pool,
                               caps=CAPS["host-c"])  # fmt: skip
    most_running = [0]
    watching = threading.Event()

    def watch() -> None:  # host-c's active VMs, sampled all along
        while not watching.wait(0.1):
            most_running[0] = max(most_running[0], c_room.read_room().running_vms)

    with ExitStack() as stack:
        stack.callback(c_room.close)
        daemons = {name: stack.enter_context(host_daemon(
            lab, name, broker_settings, caps=CAPS[name],
            verdict=Verdict.HEALTHY if name == "host-c" else Verdict.SEVERE,
        )) for name in ("host-a", "host-b", "host-c")}  # fmt: skip
        for source in vms:
            wait_until_healthy(daemons[source].view.view, ("host-c",))
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        errors: list[BaseException] = []

        def run(source: str) -> None:
            try:
                (tmp_path / source).mkdir()
                evacuate(tmp_path / source, lab, source, vms[source], view=daemons[source].view.view,
                         claims=recording_claims(broker_settings, source), outcomes=told[source])  # fmt: skip
            except BaseException as exc:  # reported on the test's thread
                errors.append(exc)

        movers = [threading.Thread(target=run, args=(source,)) for source in vms]
        started = time.monotonic()
        for mover in movers:
            mover.start()
        for mover in movers:
            mover.join(300)
        watching.set()
        watcher.join(5)
        assert errors == [] and not any(m.is_alive() for m in movers), errors
        assert daemons["host-c"].desk.held() == (), "every claim given back"
        final = c_room.read_room()
    moved = [r for outcomes in told.values() for r in outcomes.moves]
    failed = [(r, reason) for outcomes in told.values() for r, reason in outcomes.failures]
    print(f"both sources done in {time.monotonic() - started:.1f} s: {len(moved)} moved, {len(failed)} not")
    assert len(moved) == 2 and {r.destination for r in moved} == {"host-c"}
    assert len(failed) == 2 and all(reason.startswith("no_capacity: ") for _, reason in failed), failed
    assert most_running[0] <= 2 and final.running_vms == 2, "host-c never ran more than it has room for"
    assert final.memory_free_bytes >= 0
    opener = lab_opener(lab)
    for record in moved:
        with opener("host-c") as host_c:
            vm = host_c.find_vm(record.vm_uuid)
            assert vm is not None and vm.state is VmState.RUNNING
    for record, _ in failed:
        source = next(s for s in vms if record.vm_uuid in vms[s])
        with opener(source) as host:
            vm = host.find_vm(record.vm_uuid)
            assert vm is not None and vm.state is VmState.RUNNING, "the unplaced VM still serves"
