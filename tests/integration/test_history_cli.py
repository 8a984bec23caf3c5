"""All real: the daemon on host-a moves a VM to host-b after a sensor heats up, and `evacuator history` shows
that move from the journal, while the daemon runs and after it stopped."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm
from notifiers.settings import BrokerSettings
from notifiers.topology import host_replies_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant
from tests.fixtures.daemon import Daemons, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
WINDOW_SECONDS = 5


def _history(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "evacuator.cli", "history", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _row(shown: dict[str, Any], vm_uuid: str) -> dict[str, Any]:
    (row,) = [m for m in shown["moves"] if m["vm_uuid"] == vm_uuid]
    return row


def test_history_shows_the_move_a_real_evacuation_made(
    tmp_path: Path,
    clean_lab_hosts: tuple[LabHost, ...],
    broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant],
    daemon: Daemons,
    broker_janitor: BrokerJanitor,
) -> None:
    host_a, host_b = clean_lab_hosts
    broker_janitor.queue(host_replies_queue("host-a", replies_exchange=broker_settings.replies_exchange))
    owner = make_tenant("acme")
    web = create_vm(host_a.uri, host_a.pool, name="web", tenant=owner.name, window_seconds=WINDOW_SECONDS,
                    disk_bytes=16 * MIB, data=random.Random(3).randbytes(MIB),
                    mac="52:54:00:e2:e1:01")  # fmt: skip
    sensor = HeatableHwmon(tmp_path / "sys", celsius=45)
    config = write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys")
    log = daemon(config)

    sensor.set_celsius(97)
    log.wait_for("move_journaled_done", WINDOW_SECONDS + 90, vm_uuid=web)
    finished = log.wait_for("move_finished", 1, vm_uuid=web)
    incident = log.wait_for("incident_opened", 1)["incident_id"]

    running = json.loads(_history(config, "--json"))  # the daemon holds the journal open and writes it
    row = _row(running, web)
    assert (row["vm_name"], row["tenant"], row["source"], row["destination"]) == (
        "web", owner.name, "host-a", "host-b")
    assert (row["outcome"], row["method"], row["error"]) == ("done", "cold", None)
    assert (row["incident_id"], row["why"].split(":")[0]) == (incident, "severe")
    assert row["bytes_copied"] == finished["bytes_copied"] >= MIB
    assert 0 < row["downtime_seconds"] <= row["duration_seconds"]
    # The guest was off once its quiesce step finished, and ran on host-b once its start step did.
    off = log.wait_for("move_step_finished", 1, vm_uuid=web, step="quiesce")["at"]
    on = log.wait_for("move_step_finished", 1, vm_uuid=web, step="start")["at"]
    assert row["downtime_seconds"] == pytest.approx((on - off).total_seconds(), abs=0.1)
    assert [i["incident_id"] for i in running["incidents"]] == [incident]

    assert daemon.stop(log) == 0
    stopped = json.loads(_history(config, "--json", "--since", "1h"))
    assert _row(stopped, web) == row
    table = _history(config)
    print(f"\n{table}\n{json.dumps(row, indent=2)}")  # for the closing note (pytest -s shows it)
    assert table.startswith(f"incident {incident} severe") and "host-b" in table
    (line,) = [line for line in table.splitlines() if line.split()[2:3] == ["web"]]
    assert line.split()[2:8] == ["web", owner.name, "host-a", "host-b", "cold", "done"]
