"""Integration, all real: a VM whose metadata asks for `live` moves while running, disk and identity kept."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evacuator.hypervisor.facts import MoveMethod, VmFacts
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveState

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_live_method_moves_a_running_vm_without_shutting_it_down(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...]
) -> None:
    host_a, host_b = clean_lab_hosts
    uuid = create_vm(host_a.uri, host_a.pool, name="lively", tenant="acme", window_seconds=0,
                     disk_bytes=32 * MIB, data=random.Random(3).randbytes(4 * MIB), mac="52:54:00:11:ee:01",
                     facts=VmFacts(tenant="acme", method=MoveMethod.LIVE))  # fmt: skip
    digest = sha256_of_volume(host_a.uri, host_a.pool, volume_name("lively"))
    config = tmp_path / "evacuator.yaml"
    config.write_text(yaml.safe_dump({
        "host": {"name": "host-a", "libvirt_uri": host_a.uri, "storage_pool": host_a.pool,
                 "migration_address": "127.0.0.1"},
        "peers": [{"name": "host-b", "libvirt_uri": host_b.uri, "storage_pool": host_b.pool}],
        "evacuation": {"shutdown_timeout_seconds": 0.3, "move_attempts": 1},
        "state_dir": str(tmp_path / "state"), "logging": {"format": "json", "level": "info"},
    }))  # fmt: skip
    moved = subprocess.run([sys.executable, "-m", "evacuator.cli", "move", uuid, "--config", str(config)],
                           capture_output=True, text=True, timeout=120, check=False)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "live_migration_started" in moved.stderr and "vm_forced_off" not in moved.stderr
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        record = journal.get(uuid)
        steps = {step for _, _, step in journal.history(uuid) if step}
    assert record is not None and record.state is MoveState.DONE
    assert "quiesce" not in steps and {"copy_disks", "verify", "clean_up"} <= steps
    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as a, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:  # fmt: skip
        there = b.find_vm(uuid)
        assert there is not None and there.state is VmState.RUNNING and there.macs == ("52:54:00:11:ee:01",)
        assert a.find_vm(uuid) is None and a.find_volume(host_a.pool, volume_name("lively")) is None
    # The guest (no OS) wrote nothing: the running copy's disk is the source's, byte for byte.
    assert sha256_of_volume(host_b.uri, host_b.pool, volume_name("lively")) == digest
