"""Integration, all real: pre-copy during the window on two lab libvirt hosts. A VM whose disk is written
during its window (raw and qcow2) ends on the destination with the source's final content, and so does each
VM of a consistency group, pre-copied together to one host; a daemon SIGKILLed during the window's pre-copy
resumes it toward the journaled destination and moves the VM once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest
from structlog.testing import capture_logs

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.incident.planner import PlannedMove
from evacuator.lab.hosts import LabHost, pool_volumes
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm, domain_xml, sha256_of_volume, volume_name
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.engine import MoveEngine
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveState, Phase
from evacuator.wiring.moves import assemble_engine
from notifiers.settings import BrokerSettings
from notifiers.topology import host_replies_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant
from tests.fixtures.daemon import Daemons, write_config

pytestmark = pytest.mark.integration

MIB = 1 << 20
DISK_BYTES = 64 * MIB
WINDOW_SECONDS = 6


def _vm(host: LabHost, fmt: str, data: bytes, *, name: str = "busy", mac: str = "52:54:00:f7:00:01",
        facts: VmFacts | None = None) -> tuple[str, Path, list[tuple[int, int, int]]]:
    """A running VM whose disk, raw or qcow2, shows `data` to its guest; returns its uuid, its disk file and
    the (guest offset, file offset, length) of each run of data in that file."""
    raw = host.pool_path / "seed.raw"
    raw.write_bytes(data)
    os.truncate(raw, DISK_BYTES)
    path = host.pool_path / f"{name}.{fmt}"
    if fmt == "raw":
        raw.rename(path)
        extents = [(0, 0, DISK_BYTES)]
    else:
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
        raw.unlink()
        mapped = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(path)], check=True,
                                           capture_output=True, text=True).stdout)  # fmt: skip
        extents = [(e["start"], e["offset"], e["length"]) for e in mapped if e["data"] and "offset" in e]
    conn = libvirt.open(host.uri)
    try:
        conn.storagePoolLookupByName(host.pool).refresh(0)
        xml = domain_xml(name=name, pool=host.pool, volume=path.name, mac=mac,
                         facts=facts or VmFacts(tenant="acme")).replace("type='raw'", f"type='{fmt}'")
        dom = conn.defineXML(xml)
        dom.create()
        return str(dom.UUIDString()), path, extents
    finally:
        conn.close()


class _Guest:
    """Writes 4 KiB pieces into the disk file's data, as the guest would, and keeps the guest's view."""

    def __init__(self, path: Path, extents: list[tuple[int, int, int]], data: bytes) -> None:
        self._path = path
        self._extents = extents
        self.view = bytearray(data + bytes(DISK_BYTES - len(data)))
        self._rng = random.Random(3)

    def write(self, count: int) -> None:
        with self._path.open("r+b") as disk:
            for _ in range(count):
                guest, at, length = self._rng.choice(self._extents)
                offset = self._rng.randrange(0, length - 4096) // 4096 * 4096
                piece = self._rng.randbytes(4096)
                os.pwrite(disk.fileno(), piece, at + offset)
                self.view[guest + offset : guest + offset + 4096] = piece


def _until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


@contextmanager
def _lab_engine(tmp_path: Path, host_a: LabHost, host_b: LabHost,
                ) -> Iterator[tuple[MoveEngine, Journal, list[MutableMapping[str, Any]]]]:
    """host-a's engine, moving to host-b with a pass every 0.5 s and a 1 s shutdown timeout; its journal, and
    the log lines of everything done meanwhile."""

    @contextmanager
    def open_host(name: str) -> Iterator[Hypervisor]:
        host = host_a if name == "host-a" else host_b
        with open_libvirt_host(name, host.uri, host.pool, local_files=name == "host-a") as opened:
            yield opened

    config = EngineConfig(host="host-a", peers=("host-b",), precopy_pass_interval_seconds=0.5)
    with Journal(tmp_path / "journal.sqlite") as journal, capture_logs() as logs, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool) as own:  # fmt: skip
        timings = MigrationTimings(shutdown_timeout_seconds=1.0, poll_interval_seconds=0.1)
        yield assemble_engine(config, timings, journal=journal, hypervisor=own, open_host=open_host,
                              clock=lambda: datetime.now(UTC), sleep=time.sleep), journal, logs


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_vm_written_during_its_window_ends_on_the_destination_with_its_final_disk(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], fmt: str,
) -> None:
    host_a, host_b = clean_lab_hosts
    data = random.Random(21).randbytes(48 * MIB)
    uuid, path, extents = _vm(host_a, fmt, data)
    guest = _Guest(path, extents, data)

    with _lab_engine(tmp_path, host_a, host_b) as (engine, journal, logs):
        engine.plan([PlannedMove(vm_uuid=uuid, vm_name="busy", tenant="acme", window_seconds=WINDOW_SECONDS,
                                 deadline=datetime.now(UTC) + timedelta(seconds=WINDOW_SECONDS))],
                    may_restart_on_source=True)  # fmt: skip
        engine.start(timer_pending=lambda _: True)
        engine.mark(uuid, MoveState.WAITING)
        _until(lambda: any(e["event"] == "window_precopy_pass" for e in logs), 30)
        for _ in range(8):  # the guest goes on writing through the window's passes
            guest.write(16)
            time.sleep(0.3)
        record = journal.get(uuid)
        assert record is not None and (record.phase, record.destination) == (Phase.PRECOPYING, "host-b")
        assert engine.submit(uuid)
        assert engine.wait_idle(120)
        engine.stop()
        record = journal.get(uuid)
    assert record is not None and record.state is MoveState.DONE, record
    with open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:
        moved = b.find_vm(uuid)
    assert moved is not None and moved.state is VmState.RUNNING
    assert pool_volumes(host_a) == [] and pool_volumes(host_b) == [path.name]
    expected = hashlib.sha256(guest.view).hexdigest()
    copy = host_b.pool_path / path.name
    if fmt == "raw":
        assert sha256_of_volume(host_b.uri, host_b.pool, path.name) == expected
    else:  # what the guest sees in the copy, the qcow2 file read through QEMU's block layer
        plain = tmp_path / "copy.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(copy), str(plain)],
                       check=True)  # fmt: skip
        assert hashlib.sha256(plain.read_bytes()).hexdigest() == expected
    converged = [e for e in logs if e["event"] == "precopy_converged"]
    assert any(e["patched_bytes"] for e in converged), "later passes sent what the guest wrote"
    finished = [e for e in logs if e["event"] == "precopy_finished"]
    assert len(finished) == 1 and finished[0]["patched_bytes"] < DISK_BYTES // 4


def test_a_group_written_during_its_window_is_pre_copied_to_one_host_and_moves_with_its_final_disks(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...],
) -> None:
    host_a, host_b = clean_lab_hosts
    members = {}
    for order, name in enumerate(("db", "app"), start=1):
        data = random.Random(order).randbytes(24 * MIB)
        uuid, path, extents = _vm(host_a, "raw", data, name=name, mac=f"52:54:00:f7:01:0{order}",
                                  facts=VmFacts(tenant="acme", group="shop", boot_order=order))
        members[name] = (uuid, path, _Guest(path, extents, data))

    deadline = datetime.now(UTC) + timedelta(seconds=WINDOW_SECONDS)
    with _lab_engine(tmp_path, host_a, host_b) as (engine, journal, logs):
        engine.plan([PlannedMove(vm_uuid=uuid, vm_name=name, tenant="acme", window_seconds=WINDOW_SECONDS,
                                 deadline=deadline) for name, (uuid, _, _) in members.items()],
                    may_restart_on_source=True)  # fmt: skip
        engine.start(timer_pending=lambda _: True)
        for uuid, _, _ in members.values():
            engine.mark(uuid, MoveState.WAITING)
        _until(lambda: any(e["event"] == "window_precopy_pass" for e in logs), 30)
        for _ in range(6):  # both guests go on writing through the window's passes
            for _, _, guest in members.values():
                guest.write(8)
            time.sleep(0.3)
        records = [journal.get(uuid) for uuid, _, _ in members.values()]
        assert all(r is not None and (r.phase, r.destination) == (Phase.PRECOPYING, "host-b")
                   for r in records)
        assert engine.submit(members["app"][0])  # one window closing makes the whole group due
        assert engine.wait_idle(120)
        engine.stop()
        records = [journal.get(uuid) for uuid, _, _ in members.values()]
    assert all(r is not None and r.state is MoveState.DONE for r in records), records
    with open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:
        assert all((vm := b.find_vm(uuid)) is not None and vm.state is VmState.RUNNING
                   for uuid, _, _ in members.values())
    assert pool_volumes(host_a) == []
    for _, path, guest in members.values():
        assert sha256_of_volume(host_b.uri, host_b.pool, path.name) == hashlib.sha256(guest.view).hexdigest()
    started = [e for e in logs if e["event"] == "window_precopy_started"]
    assert len(started) == 1 and started[0]["group"] == "shop"  # one pre-copy, to one host, for the group
    finished = [e for e in logs if e["event"] == "precopy_finished"]
    assert sorted(e["volume"] for e in finished) == ["app.raw", "db.raw"]  # both moved from the pre-copy


def test_a_daemon_killed_during_the_window_pre_copy_resumes_it_and_moves_the_vm_once(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant], daemon: Daemons, broker_janitor: BrokerJanitor,
) -> None:  # fmt: skip
    host_a, host_b = clean_lab_hosts
    broker_janitor.queue(host_replies_queue("host-a", replies_exchange=broker_settings.replies_exchange))
    owner = make_tenant("window-precopy")
    data = random.Random(22).randbytes(96 * MIB)
    uuid = create_vm(host_a.uri, host_a.pool, name="web", tenant=owner.name, window_seconds=25,
                     disk_bytes=128 * MIB, data=data, mac="52:54:00:f7:00:02")
    expected = sha256_of_volume(host_a.uri, host_a.pool, volume_name("web"))
    sensor = HeatableHwmon(tmp_path / "sys", celsius=45)
    config = write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys",
                          evacuation={"precopy_pass_interval_seconds": 1})  # fmt: skip
    log = daemon(config)
    sensor.set_celsius(97)
    log.wait_for("window_precopy_started", 60)
    partial = host_b.pool_path / volume_name("web")
    _until(lambda: partial.exists() and partial.stat().st_blocks * 512 >= 4 * MIB, 30)
    daemon.kill(log)
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        at_kill = journal.get(uuid)
    assert at_kill is not None and (at_kill.state, at_kill.phase) == (MoveState.WAITING, Phase.PRECOPYING)
    assert at_kill.destination == "host-b"
    again = daemon(config)
    again.wait_for("window_precopy_started", 60)  # resumed toward the journaled destination
    again.wait_for("move_journaled_done", 120)
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        record = journal.get(uuid)
    assert record is not None and record.state is MoveState.DONE and record.destination == "host-b"
    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as a, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:  # fmt: skip
        assert a.list_vms() == ()
        assert [(vm.uuid, vm.state) for vm in b.list_vms()] == [(uuid, VmState.RUNNING)]
    assert pool_volumes(host_a) == [] and pool_volumes(host_b) == [volume_name("web")]
    assert sha256_of_volume(host_b.uri, host_b.pool, volume_name("web")) == expected
