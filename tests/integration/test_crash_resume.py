"""Integration, all real: the move engine is SIGKILLed at every journaled step, restarted, loses nothing."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from evacuator.hypervisor.facts import MoveMethod, VmFacts
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.hosts import LabHost, pool_volumes
from evacuator.lab.peer import host_daemon
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.migrate.steps import MoveStep
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveState
from evacuator.wiring.moves import CRASH_AT_ENV
from notifiers.settings import BrokerSettings

pytestmark = pytest.mark.integration

MIB = 1 << 20
TRIALS = 3
CRASH_POINTS = (
    ["due:due"]
    + [f"{step}:{phase}" for step in MoveStep for phase in ("started", "finished")]
    + ["done:finished"]
)
# A live move journals fewer steps: the migration is its copy (evacuator/migrate/live.py).
LIVE_STEPS = (MoveStep.COPY_DISKS, MoveStep.VERIFY, MoveStep.CLEAN_UP)
LIVE_CRASH_POINTS = (
    ["due:due"]
    + [f"{step}:{phase}" for step in LIVE_STEPS for phase in ("started", "finished")]
    + ["done:finished"]
)


def _config(tmp: Path, host_a: LabHost, host_b: LabHost, broker: BrokerSettings | None = None, *,
            shutdown_timeout_seconds: float = 0.3) -> Path:
    config: dict[str, object] = {
        "host": {"name": "host-a", "libvirt_uri": host_a.socket_uri, "storage_pool": host_a.pool,
                 "migration_address": "127.0.0.1"},
        "peers": [{"name": "host-b", "libvirt_uri": host_b.uri, "storage_pool": host_b.pool}],
        # The lab guests have no OS and ignore ACPI: every quiesce waits out this timeout.
        "evacuation": {"shutdown_timeout_seconds": shutdown_timeout_seconds},
        "state_dir": str(tmp / "state"),
        "logging": {"format": "json", "level": "warning"},
    }
    if broker is not None:  # host-b's daemon listens there: copies go through its data channel
        config["broker"] = {"url": broker.url.get_secret_value(), "peers_exchange": broker.peers_exchange}
        # The lab's daemons all connect as the broker's admin user: so is the peer's.
        config["peers"] = [{"name": "host-b", "libvirt_uri": host_b.uri, "storage_pool": host_b.pool,
                            "broker_user": urlsplit(broker.url.get_secret_value()).username or "guest"}]
    path = tmp / "evacuator.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _move(config: Path, *vm_uuids: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT_ENV}
    if crash_at is not None:
        env[CRASH_AT_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "evacuator.cli", "move", "--config", str(config), *vm_uuids],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_killed_at_every_journaled_step_and_restarted_no_vm_is_lost(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
) -> None:
    # host-b's own daemon runs, as in production: the disks travel through its data channel.
    with host_daemon(clean_lab_hosts[1], broker_url=broker_settings.url.get_secret_value(),
                     exchange=broker_settings.peers_exchange) as daemon:
        _crash_and_resume(tmp_path, clean_lab_hosts, CRASH_POINTS, method=MoveMethod.COLD, seed=5,
                          broker=broker_settings)
        assert daemon.receiver is not None
        # Every trial copies its disk once at least (twice when the kill lands between copy and define).
        assert daemon.receiver.received >= len(CRASH_POINTS) * TRIALS


def test_a_live_move_killed_at_every_journaled_step_and_restarted_loses_no_vm(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...]
) -> None:
    _crash_and_resume(tmp_path, clean_lab_hosts, LIVE_CRASH_POINTS, method=MoveMethod.LIVE, seed=6)


def test_a_live_move_killed_while_libvirt_migrates_resumes_and_runs_once(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...]
) -> None:
    """Not a journaled step but the riskiest moment: the mover dies while libvirt streams the guest (its
    incoming copy already exists, paused, on the destination). libvirt aborts a migration whose client is
    gone; the restarted mover must find the guest on its source and move it once."""
    host_a, host_b = clean_lab_hosts
    config = _config(tmp_path, host_a, host_b)
    caught_midway = 0
    for trial in range(TRIALS):
        name, mac = f"midlive-{trial}", f"52:54:00:cd:00:{trial:02x}"
        uuid, expected_sha256 = _vm(host_a, name, mac, random.Random(trial), MoveMethod.LIVE)
        mover = _start_move(config, uuid)
        with open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:
            deadline = time.monotonic() + 60
            while b.find_vm(uuid) is None and mover.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            mover.kill()
            mover.communicate(timeout=60)
            incoming = b.find_vm(uuid)
        caught_midway += incoming is not None and incoming.state is not VmState.RUNNING
        resumed = _move(config)
        assert resumed.returncode == 0, (trial, resumed.stderr[-3000:])
        with Journal(tmp_path / "state" / "journal.sqlite") as journal:
            record = journal.get(uuid)
        assert record is not None and record.state is MoveState.DONE, (trial, record)
        _assert_exactly_once_on_b(host_a, host_b, uuid, name, mac, expected_sha256, f"mid-live {trial}")
    print(f"\nkilled during a live migration: {TRIALS} trials, {caught_midway} with the incoming guest "
          "paused")
    assert caught_midway >= 1  # at least one kill really landed while the migration ran


def test_killed_mid_pre_copy_and_restarted_the_partial_copy_is_replaced_and_no_vm_is_lost(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...]
) -> None:
    """Not a journaled step either: the mover dies while it copies a running VM's disk during its shutdown
    (the journal says quiescing, the destination holds part of the disk). The restarted mover must remove
    that part, copy the disk again and move the VM once."""
    host_a, host_b = clean_lab_hosts
    # Long enough for the kill to land while the guest (which ignores ACPI) still runs.
    config = _config(tmp_path, host_a, host_b, shutdown_timeout_seconds=4.0)
    disk_bytes = 96 * MIB  # dense: libvirt's upload of it takes about a second here
    caught_running = 0
    for trial in range(TRIALS):
        name, mac = f"midcopy-{trial}", f"52:54:00:ce:00:{trial:02x}"
        data = random.Random(100 + trial).randbytes(disk_bytes)
        uuid = create_vm(host_a.uri, host_a.pool, name=name, tenant="acme", window_seconds=0,
                         disk_bytes=disk_bytes, data=data, mac=mac)
        partial = host_b.pool_path / volume_name(name)
        mover = _start_move(config, uuid)
        deadline = time.monotonic() + 60
        while mover.poll() is None and time.monotonic() < deadline and not (
                partial.exists() and partial.stat().st_blocks * 512 >= 8 * MIB):
            time.sleep(0.002)
        mover.kill()
        mover.communicate(timeout=60)
        assert partial.exists() and partial.stat().st_blocks * 512 < disk_bytes, "killed mid-copy"
        with Journal(tmp_path / "state" / "journal.sqlite") as journal:
            at_kill = journal.get(uuid)
        assert at_kill is not None and at_kill.state is MoveState.QUIESCING, (trial, at_kill)
        with open_libvirt_host("host-a", host_a.uri, host_a.pool) as a:
            still = a.find_vm(uuid)
        caught_running += still is not None and still.state is VmState.RUNNING
        resumed = _move(config)
        assert resumed.returncode == 0, (trial, resumed.stderr[-3000:])
        with Journal(tmp_path / "state" / "journal.sqlite") as journal:
            record = journal.get(uuid)
        assert record is not None and record.state is MoveState.DONE, (trial, record)
        _assert_exactly_once_on_b(host_a, host_b, uuid, name, mac, hashlib.sha256(data).hexdigest(),
                                  f"mid pre-copy {trial}")
    print(f"\nkilled during a pre-copy: {TRIALS} trials, {caught_running} with the guest still running")
    assert caught_running >= 1  # at least one kill landed while the guest still ran: a pre-copy proper


def _vm(host: LabHost, name: str, mac: str, rng: random.Random, method: MoveMethod) -> tuple[str, str]:
    data = rng.randbytes(MIB // 2)
    uuid = create_vm(host.uri, host.pool, name=name, tenant="acme", window_seconds=0, disk_bytes=4 * MIB,
                     data=data, mac=mac, facts=VmFacts(tenant="acme", method=method))
    return uuid, hashlib.sha256(data + bytes(4 * MIB - len(data))).hexdigest()


def _start_move(config: Path, *vm_uuids: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "evacuator.cli", "move", "--config", str(config), *vm_uuids],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _crash_and_resume(
    tmp_path: Path, hosts: tuple[LabHost, ...], points: list[str], *, method: MoveMethod, seed: int,
    broker: BrokerSettings | None = None,
) -> None:
    host_a, host_b = hosts
    config = _config(tmp_path, host_a, host_b, broker)
    rng = random.Random(seed)
    began = time.monotonic()
    trials = 0
    for point_index, crash_at in enumerate(points):
        for trial in range(TRIALS):
            name = f"crash-{method}-{point_index}-{trial}"
            mac = f"52:54:00:{seed:02x}:{point_index:02x}:{trial:02x}"
            uuid, expected_sha256 = _vm(host_a, name, mac, rng, method)

            crashed = _move(config, uuid, crash_at=crash_at)
            assert crashed.returncode == -signal.SIGKILL, (crash_at, crashed.returncode,
                                                           crashed.stderr[-2000:])
            with Journal(tmp_path / "state" / "journal.sqlite") as journal:
                at_crash = journal.get(uuid)
            # The process died right after journaling the crash point: the journal's last word is that point.
            assert at_crash is not None, crash_at
            step, phase = crash_at.split(":")
            assert str(at_crash.phase) == phase, (crash_at, at_crash)
            assert at_crash.step in (step, "clean_up" if step == "done" else None), (crash_at, at_crash)
            resumed = _move(config)
            assert resumed.returncode == 0, (crash_at, resumed.stderr[-3000:])

            with Journal(tmp_path / "state" / "journal.sqlite") as journal:
                record = journal.get(uuid)
            assert record is not None and record.state is MoveState.DONE, (crash_at, record)
            assert record.destination == "host-b" and record.start_on_destination
            _assert_exactly_once_on_b(host_a, host_b, uuid, name, mac, expected_sha256, crash_at)
            trials += 1
    seconds = time.monotonic() - began
    print(f"\n{method} moves: crash points: {len(points)}, trials each: {TRIALS}, trials: {trials}, "
          f"wall time: {seconds:.1f} s")


def _assert_exactly_once_on_b(
    host_a: LabHost, host_b: LabHost, uuid: str, name: str, mac: str, expected_sha256: str, crash_at: str
) -> None:
    volume = volume_name(name)
    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as a, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:  # fmt: skip
        assert a.find_vm(uuid) is None, crash_at
        moved = b.find_vm(uuid)
        assert moved is not None and moved.state is VmState.RUNNING, (crash_at, moved)
        assert moved.macs == (mac,) and moved.name == name
        assert [vm.uuid for vm in a.list_vms()] == [] and [vm.uuid for vm in b.list_vms()] == [uuid]
        # No orphan: the source pool is empty, the destination holds exactly this VM's disk.
        assert pool_volumes(host_a) == [] and pool_volumes(host_b) == [volume], crash_at
        assert sha256_of_volume(host_b.uri, host_b.pool, volume) == expected_sha256, crash_at
        # Clear the way for the next trial without restarting anything.
        b.destroy_vm(uuid)
        b.undefine_vm(uuid)
        b.delete_volume(host_b.pool, volume)
