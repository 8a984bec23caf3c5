"""Planned maintenance, all real (issue 21): the daemon runs on healthy host-a; `evacuator drain --wait` moves
its VMs to host-b through the tenant contract: the tenant hears evacuation_scheduled with severity
maintenance and the admin's reason, answers ready for one VM (it moves at once) and nothing for the other (it
waits out the drain's window); the command follows the drain and exits 0 once both moved; host-a says it is
in maintenance on the host view until `evacuator undrain`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm
from notifiers.messages import EvacuationScheduled, VmEvacuated
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import host_replies_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant, next_notice_of
from tests.fixtures.daemon import Daemons, cli, write_config

pytestmark = pytest.mark.integration

MIB = 1 << 20
DRAIN_WINDOW_SECONDS = 8  # db registered no window: it gets the drain's
WEB_WINDOW_SECONDS = 300  # web's own window: its tenant answers ready long before


def _status(config: Path) -> Any:
    shown = cli(config, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _maintenance(config: Path) -> bool:
    shown = cli(config, "hosts", "--json", "--listen-seconds", "8")
    assert shown.returncode == 0, shown.stderr
    return bool(next(h for h in json.loads(shown.stdout)["hosts"] if h["host"] == "host-a")["maintenance"])


def test_drain_moves_every_vm_through_the_contract_and_undrain_returns_the_host(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant], daemon: Daemons, broker_janitor: BrokerJanitor,
) -> None:  # fmt: skip
    host_a, host_b = clean_lab_hosts
    broker_janitor.queue(host_replies_queue("host-a", replies_exchange=broker_settings.replies_exchange))
    owner = make_tenant("acme")
    uuids = {
        "web": create_vm(host_a.uri, host_a.pool, name="web", tenant=owner.name,
                         window_seconds=WEB_WINDOW_SECONDS, disk_bytes=4 * MIB, data=b"w" * 4096,
                         mac="52:54:00:d1:00:01"),
        "db": create_vm(host_a.uri, host_a.pool, name="db", tenant=owner.name, window_seconds=None,
                        disk_bytes=4 * MIB, data=b"d" * 4096, mac="52:54:00:d1:00:02"),
    }  # fmt: skip
    HeatableHwmon(tmp_path / "sys", celsius=45)  # a healthy host: nothing but the admin moves its VMs
    # The lab's guests ignore ACPI: each shutdown takes this long, long enough for `status` to see a move.
    config = write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys",
                          evacuation={"shutdown_timeout_seconds": 6})  # fmt: skip
    log = daemon(config)

    with TenantClient(owner.url, owner.name, replies_exchange=broker_settings.replies_exchange) as tenant:
        drain = subprocess.Popen(
            [sys.executable, "-m", "evacuator.cli", "drain", "--config", str(config), "--wait",
             "--window", str(DRAIN_WINDOW_SECONDS), "--reason", "BIOS update, rack 7"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        scheduled = next_notice_of(tenant, EvacuationScheduled, 30)
        assert scheduled.severity == "maintenance" and scheduled.host == "host-a"
        assert [(r.source, r.message) for r in scheduled.reasons] == [("maintenance", "BIOS update, rack 7")]
        deadlines = {vm.vm_uuid: vm.deadline for vm in scheduled.vms}
        window = (deadlines[uuids["web"]] - deadlines[uuids["db"]]).total_seconds()
        assert window == pytest.approx(WEB_WINDOW_SECONDS - DRAIN_WINDOW_SECONDS, abs=2), "each its window"
        waiting = _status(config)  # `evacuator status` while the VMs wait
        assert waiting["daemon"]["running"] and waiting["incident"]["severity"] == "maintenance"
        left = {vm["vm_name"]: vm["seconds_left"] for vm in waiting["vms"]}
        assert left["web"] > WEB_WINDOW_SECONDS - 30 and all(vm["outcome"] is None for vm in waiting["vms"])
        tenant.send_ready("host-a", uuids["web"], scheduled.event_id)
        deadline = time.monotonic() + 20
        while not (moving := [m for m in _status(config)["moving"] if m["vm_name"] == "web"]):
            assert time.monotonic() < deadline, "status showed web's move under way"
        assert moving[0]["destination"] == "host-b" and moving[0]["step"]
        shown = cli(config, "status")
        print("evacuator status during the move:\n" + shown.stdout)
        assert "web" in shown.stdout and "maintenance" in shown.stdout
        moved = {next_notice_of(tenant, VmEvacuated, 90).vm_uuid for _ in uuids}
        out, err = drain.communicate(timeout=90)
    print("evacuator drain --wait:\n" + out)
    assert drain.returncode == 0, err
    assert moved == set(uuids.values())
    assert "web" in out and "db" in out and "2 of 2 moved" in out and "undrain" in out
    assert log.wait_for("admin_request_taken", 5, action="drain")["outcome"] == "accepted"
    with open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:
        for uuid in uuids.values():
            vm = b.find_vm(uuid)
            assert vm is not None and vm.state is VmState.RUNNING

    assert _maintenance(config), "drained: host-a takes no VMs"
    again = cli(config, "drain", "--wait")
    assert again.returncode == 0, again.stderr  # nothing left to move: an empty drain ends at once
    undrain = cli(config, "undrain")
    assert undrain.returncode == 0 and "back in service" in undrain.stdout, undrain.stderr
    assert not _maintenance(config), "undrained: host-a takes VMs again"
