"""End to end, all real: the daemon on host-a moves a tenant's VMs to host-b after a sensor heats up."""

from __future__ import annotations

import hashlib
import random
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pika
import pika.exceptions
import pytest
from prometheus_client.parser import text_string_to_metric_families

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from notifiers.messages import EvacuationScheduled, ReadyReply, VmEvacuated, encode
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import host_replies_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant, next_notice_of
from tests.fixtures.daemon import CONSECUTIVE, POLL_SECONDS, DaemonLog, Daemons, write_config

pytestmark = pytest.mark.integration

MIB = 1 << 20
READY_WINDOW_SECONDS = 120  # VM 1: the tenant answers ready long before this
WAIT_WINDOW_SECONDS = 15  # VM 2: no answer, it moves when this runs out


def daemon_memory(log: DaemonLog) -> str:
    """The daemon's memory from /proc, for the closing note: file-backed pages are shared libraries."""
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    lines = Path(f"/proc/{log.pid}/status").read_text(encoding="ascii").splitlines()
    values = {k: v.strip() for k, _, v in (line.partition(":") for line in lines) if k in fields}
    return ", ".join(f"{k} {values.get(k)}" for k in fields)


def _scrape(url: str) -> dict[str, float]:
    """Every sample /metrics shows, by name and labels as Prometheus's text format writes them."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        f"{sample.name}{_labels(sample.labels)}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape_until(
    url: str, settled: Callable[[dict[str, float]], bool], timeout_seconds: float
) -> dict[str, float]:
    """/metrics once `settled` holds of it (the last notices may still be on their way to the broker)."""
    deadline = time.monotonic() + timeout_seconds
    while not settled(scraped := _scrape(url)):
        assert time.monotonic() < deadline, scraped
        time.sleep(0.2)
    return scraped


def _allocated_bytes(host: LabHost, volumes: dict[str, str]) -> dict[str, int]:
    """What each VM's disk (by VM uuid) stores on `host`: its allocated bytes, holes left out."""
    found = {}
    with open_libvirt_host(host.name, host.uri, host.pool) as opened:
        for uuid, volume in volumes.items():
            info = opened.find_volume(host.pool, volume)
            assert info is not None, volume
            found[uuid] = info.allocation_bytes
    return found


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def _forge_reply_for(victim: str, attacker: LabTenant, broker: BrokerSettings, vm_uuid: str) -> str:
    """The attacker publishes a ready for the victim's VM on the victim's routing key; returns the refusal."""
    connection = pika.BlockingConnection(pika.URLParameters(attacker.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=broker.replies_exchange, routing_key=f"{victim}.host-a",
            body=encode(ReadyReply(vm_uuid=vm_uuid)),
            properties=pika.BasicProperties(user_id=attacker.name, content_type="application/json"),
        )  # fmt: skip
    except pika.exceptions.AMQPError as exc:
        return repr(exc)
    finally:
        if connection.is_open:
            connection.close()
    raise AssertionError("the broker accepted a reply on another tenant's routing key")


def test_hot_host_evacuates_tenant_vms_to_healthy_host(
    tmp_path: Path,
    clean_lab_hosts: tuple[LabHost, ...],
    broker_settings: BrokerSettings,
    make_tenant: Callable[[str], LabTenant],
    daemon: Daemons,
    broker_janitor: BrokerJanitor,
) -> None:
    host_a, host_b = clean_lab_hosts
    broker_janitor.queue(host_replies_queue("host-a", replies_exchange=broker_settings.replies_exchange))
    owner, intruder = make_tenant("acme"), make_tenant("mallory")
    rng = random.Random(2)
    data = {name: rng.randbytes(MIB) for name in ("web", "db")}
    macs = {"web": "52:54:00:e2:e0:01", "db": "52:54:00:e2:e0:02"}
    uuids = {
        "web": create_vm(host_a.uri, host_a.pool, name="web", tenant=owner.name,
                         window_seconds=READY_WINDOW_SECONDS, disk_bytes=16 * MIB, data=data["web"],
                         mac=macs["web"]),
        "db": create_vm(host_a.uri, host_a.pool, name="db", tenant=owner.name,
                        window_seconds=WAIT_WINDOW_SECONDS, disk_bytes=16 * MIB, data=data["db"],
                        mac=macs["db"]),
    }  # fmt: skip
    sums = {name: sha256_of_volume(host_a.uri, host_a.pool, volume_name(name)) for name in uuids}
    allocated = _allocated_bytes(host_a, {uuids[name]: volume_name(name) for name in uuids})
    sensor = HeatableHwmon(tmp_path / "sys", celsius=45)
    log = daemon(write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys"))

    with TenantClient(owner.url, owner.name, replies_exchange=broker_settings.replies_exchange) as tenant:
        # One noisy sample (shorter than two polls) must move nothing: N consecutive samples are required.
        sensor.set_celsius(97)
        time.sleep(POLL_SECONDS * 1.5)
        sensor.set_celsius(45)
        time.sleep(POLL_SECONDS * (CONSECUTIVE + 2))
        assert log.matching("evacuation_planned") == []
        assert tenant.next_notice(0.5) is None

        heated_at = datetime.now(UTC)
        sensor.set_celsius(97)
        scheduled = next_notice_of(tenant, EvacuationScheduled, 30)
        received_at = datetime.now(UTC)
        metrics_url = f"http://127.0.0.1:{log.wait_for('metrics_listening', 5)['port']}/metrics"
        during = _scrape(metrics_url)  # the evacuation is under way: told, nothing moved yet
        assert during['evacuator_host_verdict{severity="severe"}'] == 1.0
        assert during['evacuator_host_verdict{severity="healthy"}'] == 0.0
        assert during["evacuator_incidents_total"] == 1.0
        assert during.get('evacuator_moves_total{outcome="moved"}', 0.0) == 0.0
        assert during['evacuator_notices_total{fate="confirmed",notice_type="evacuation_scheduled"}'] == 1.0

        assert scheduled.host == "host-a" and scheduled.severity == "severe"
        assert {vm.vm_uuid for vm in scheduled.vms} == set(uuids.values())
        deadlines = {vm.vm_uuid: vm.deadline for vm in scheduled.vms}
        assert scheduled.reasons and scheduled.reasons[0].value == 97 and scheduled.reasons[0].threshold == 90
        assert "97" in scheduled.reasons[0].message
        window = (deadlines[uuids["db"]] - deadlines[uuids["web"]]).total_seconds()
        assert window == pytest.approx(WAIT_WINDOW_SECONDS - READY_WINDOW_SECONDS, abs=1)

        # Another tenant cannot speak for this one: the broker refuses the forged routing key, and the
        # service refuses a reply about a VM the sender does not own.
        refusal = _forge_reply_for(owner.name, intruder, broker_settings, uuids["web"])
        assert "ACCESS_REFUSED" in refusal or "403" in refusal
        with TenantClient(
            intruder.url, intruder.name, replies_exchange=broker_settings.replies_exchange
        ) as bad:
            bad.send_ready("host-a", uuids["web"], scheduled.event_id)
        log.wait_for("reply_refused", 10, vm_uuid=uuids["web"], reason="not_owner")
        time.sleep(1)
        assert log.matching("move_started", vm_uuid=uuids["web"]) == []

        tenant.send_ready("host-a", uuids["web"], scheduled.event_id)
        moved = {}
        for _ in uuids:
            notice = next_notice_of(tenant, VmEvacuated, WAIT_WINDOW_SECONDS + 60)
            moved[notice.vm_uuid] = notice

    assert set(moved) == set(uuids.values())
    assert all(n.to_host == "host-b" and n.from_host == "host-a" for n in moved.values())
    web_started = log.wait_for("move_started", 1, vm_uuid=uuids["web"])["at"]
    db_started = log.wait_for("move_started", 1, vm_uuid=uuids["db"])["at"]
    assert moved[uuids["web"]].at < deadlines[uuids["web"]], "the ready VM moves before its window ends"
    assert db_started >= deadlines[uuids["db"]], "a VM without an answer waits out its whole window"
    assert web_started < db_started
    # What each move cost, as the tenant hears it: the guest's downtime, inside the move, and the bytes of
    # its disk that the copy sent, only the allocated ones (the lab guests have no OS: nothing writes).
    for uuid, notice in moved.items():
        finished = log.wait_for("move_finished", 1, vm_uuid=uuid)
        assert notice.downtime_seconds is not None and 0 < notice.downtime_seconds < finished["seconds"]
        assert notice.bytes_moved == finished["bytes_copied"] == allocated[uuid] >= MIB

    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as a, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:  # fmt: skip
        for name, uuid in uuids.items():
            on_b = b.find_vm(uuid)
            assert on_b is not None and on_b.state is VmState.RUNNING and on_b.name == name
            assert on_b.macs == (macs[name],)
            assert on_b.facts.tenant == owner.name
            assert a.find_vm(uuid) is None
            assert a.find_volume(host_a.pool, volume_name(name)) is None
            assert sha256_of_volume(host_b.uri, host_b.pool, volume_name(name)) == sums[name]
            assert sums[name] != hashlib.sha256(b"").hexdigest()

    after = _scrape(metrics_url)
    assert after['evacuator_moves_total{outcome="moved"}'] == 2.0
    assert after.get('evacuator_moves_total{outcome="failed"}', 0.0) == 0.0
    assert after["evacuator_move_duration_seconds_count"] == 2.0
    assert after["evacuator_copied_bytes_total"] >= 2 * MIB  # each VM's 1 MiB of data at least
    assert after['evacuator_notices_total{fate="confirmed",notice_type="vm_evacuated"}'] == 2.0
    assert after['evacuator_replies_total{outcome="refused",reason="not_owner"}'] == 1.0
    assert after['evacuator_move_step_duration_seconds_count{step="copy_disks"}'] == 2.0
    assert after["evacuator_move_downtime_seconds_count"] == 2.0
    assert after["evacuator_move_downtime_seconds_sum"] == pytest.approx(
        sum(n.downtime_seconds or 0.0 for n in moved.values()))
    # Each notice's latency from the outbox to the broker's confirm; the sensor against its threshold.
    assert after['evacuator_notice_confirm_seconds_count{notice_type="evacuation_scheduled"}'] == 1.0
    assert after['evacuator_notice_confirm_seconds_count{notice_type="vm_evacuated"}'] == 2.0
    readings = {k: v for k, v in after.items() if k.startswith("evacuator_temperature_")}
    assert 97.0 in readings.values() and 90.0 in readings.values(), readings
    # Nothing left in flight once every move ended: no disk copy, no notice waiting in the outbox.
    settled = _scrape_until(metrics_url, lambda m: m["evacuator_outbox_notices"] == 0.0, 10)
    assert settled['evacuator_transfers_in_flight{direction="outgoing"}'] == 0.0

    _report_timings(log, heated_at, received_at, uuids)
    print(f"daemon memory: {daemon_memory(log)}")
    # systemctl stop: the daemon stops on SIGTERM, cleanly, well before systemd would send SIGKILL.
    assert daemon.stop(log) == 0
    log.wait_for("daemon_stopping", 5, signal="SIGTERM")
    log.wait_for("daemon_stopped", 5, host="host-a")


def _report_timings(
    log: DaemonLog, heated_at: datetime, received_at: datetime, uuids: dict[str, str]
) -> None:
    """Printed for the closing note (pytest -s or -rA shows it)."""
    severe = log.wait_for("host_verdict_changed", 1, severity="severe")["at"]
    confirmed = log.wait_for("notice_confirmed", 1, notice_type="evacuation_scheduled")["at"]
    print(f"\nheat -> severe verdict: {(severe - heated_at).total_seconds():.3f} s")
    print(f"severe verdict -> broker-confirmed notice: {(confirmed - severe).total_seconds():.3f} s")
    print(f"heat -> broker-confirmed notice: {(confirmed - heated_at).total_seconds():.3f} s")
    print(f"heat -> notice received by tenant: {(received_at - heated_at).total_seconds():.3f} s")
    for name, uuid in uuids.items():
        steps = [e for e in log.matching("move_step_finished", vm_uuid=uuid)]
        shown = ", ".join(f"{e['step']} {e['seconds']:.3f} s" for e in steps)
        print(f"move {name}: {shown}")
