"""Manual approval, all real (issue 21): with evacuation.approval_severe manual, a hot host's daemon tells no
tenant and plans nothing; `evacuator status` shows the evacuation awaiting approval; `evacuator approve` lets
it begin, and only then does the tenant hear evacuation_scheduled."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm
from notifiers.messages import EvacuationScheduled
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import host_replies_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant
from tests.fixtures.daemon import Daemons, cli, write_config

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_a_manual_evacuation_waits_for_approve_and_tells_no_tenant_before(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant], daemon: Daemons, broker_janitor: BrokerJanitor,
) -> None:  # fmt: skip
    host_a, host_b = clean_lab_hosts
    broker_janitor.queue(host_replies_queue("host-a", replies_exchange=broker_settings.replies_exchange))
    owner = make_tenant("acme")
    create_vm(host_a.uri, host_a.pool, name="web", tenant=owner.name, window_seconds=600, disk_bytes=MIB,
              data=b"a" * 4096, mac="52:54:00:a9:00:01")  # fmt: skip
    sensor = HeatableHwmon(tmp_path / "sys", celsius=45)
    config = write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys",
                          evacuation={"approval_severe": "manual"})  # fmt: skip
    log = daemon(config)
    with TenantClient(owner.url, owner.name, replies_exchange=broker_settings.replies_exchange) as tenant:
        sensor.set_celsius(97)
        deadline = time.monotonic() + 30
        while True:
            shown = json.loads(cli(config, "status", "--json").stdout)
            if shown["verdict"] and shown["verdict"]["awaiting_approval"]:
                break
            assert time.monotonic() < deadline, f"status showed the evacuation awaiting approval: {shown}"
            time.sleep(0.5)
        assert shown["verdict"]["severity"] == "severe" and shown["incident"] is None
        assert "AWAITING APPROVAL" in cli(config, "status").stdout
        assert tenant.next_notice(2) is None, "no tenant is told before the approval"
        assert log.matching("evacuation_planned") == []

        approved = cli(config, "approve", "--reason", "checked the BMC")
        assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr
        notice = tenant.next_notice(30)
        assert isinstance(notice, EvacuationScheduled) and notice.severity == "severe"
    assert cli(config, "approve").returncode == 1, "nothing awaits approval any more"
