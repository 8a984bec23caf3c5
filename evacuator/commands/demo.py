"""`evacuator demo`: two local libvirt hosts, a broker, a tenant, a heated sensor and a real evacuation."""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import structlog

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.broker import LabBroker, ensure_broker, stop_private_broker
from evacuator.lab.hosts import LabHost, LabHosts, free_port_pair
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.logs import configure_logging
from evacuator.settings import Settings
from evacuator.wiring.runtime import build_runtime
from notifiers.messages import EvacuationScheduled, VmEvacuated
from notifiers.provisioning import provision_tenant, remove_tenant
from notifiers.tenant import TenantClient

log = structlog.get_logger(__name__)

MIB = 1 << 20
THRESHOLD_CELSIUS = 90.0
VMS = (  # name, registered preprocessing window; the tenant answers "ready" for the first one only
    ("shop-web", 120, "52:54:00:de:00:01"),
    ("shop-db", 8, "52:54:00:de:00:02"),
)


def _tenant_url(broker: LabBroker, tenant: str, password: str) -> str:
    parts = urlsplit(broker.url)
    netloc = f"{quote(tenant, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _settings(base: Path, host_a: LabHost, host_b: LabHost, broker: LabBroker) -> Settings:
    return Settings.model_validate(
        {
            "host": {"name": host_a.name, "libvirt_uri": host_a.socket_uri, "storage_pool": host_a.pool,
                     "migration_address": "127.0.0.1"},
            # The demo's daemons all connect as the lab broker's admin user: so is the peer's.
            "peers": [{"name": host_b.name, "libvirt_uri": host_b.uri, "storage_pool": host_b.pool,
                       "broker_user": urlsplit(broker.url).username or "guest"}],
            "monitors": {
                "sysfs_root": str(base / "sys"),
                "poll_interval_seconds": 0.5,
                "temperature": {"threshold_celsius": THRESHOLD_CELSIUS, "consecutive_samples": 3},
            },
            "broker": {"url": broker.url},
            "evacuation": {"default_window_seconds": 60, "shutdown_timeout_seconds": 3},
            "data_channel": {"listen_address": "127.0.0.1", "port": 0},
            # host-b runs the lab's peer services only (evacuator/lab/peer.py), which publish no host state
            # and answer no claims: the host view would keep every VM where it is, so the demo's host-a
            # sends them to its one peer as listed. Metrics on any free port, beside a real daemon.
            "placement": {"use_host_view": False},
            "metrics": {"port": 0},
            "state_dir": str(base / "state"),
        }
    )


def _tenant_side(client: TenantClient, host: str, timeout_seconds: float) -> dict[str, VmEvacuated]:
    """What a tenant's platform would do: read notices, drain the first VM and answer ready for it."""
    moved: dict[str, VmEvacuated] = {}
    deadline = time.monotonic() + timeout_seconds
    while len(moved) < len(VMS) and time.monotonic() < deadline:
        notice = client.next_notice(1.0)
        if isinstance(notice, EvacuationScheduled):
            for vm in notice.vms:
                log.info("demo_tenant_notified", vm_name=vm.vm_name, deadline=vm.deadline.isoformat(),
                         reason=notice.reasons[0].message if notice.reasons else None)  # fmt: skip
            first = next(vm for vm in notice.vms if vm.vm_name == VMS[0][0])
            log.info("demo_tenant_ready", vm_name=first.vm_name)
            client.send_ready(host, first.vm_uuid, notice.event_id)
        elif isinstance(notice, VmEvacuated):
            log.info("demo_tenant_vm_moved", vm_name=notice.vm_name, to_host=notice.to_host)
            moved[notice.vm_uuid] = notice
    if len(moved) < len(VMS):
        log.error("demo_timed_out", moved=len(moved), expected=len(VMS), timeout_seconds=timeout_seconds)
    return moved


def _check(host_a: LabHost, host_b: LabHost, uuids: dict[str, str], sums: dict[str, str]) -> bool:
    ok = True
    with (
        open_libvirt_host(host_a.name, host_a.uri, host_a.pool) as a,
        open_libvirt_host(host_b.name, host_b.uri, host_b.pool) as b,
    ):
        for name, uuid in uuids.items():
            there = b.find_vm(uuid)
            same_disk = sha256_of_volume(host_b.uri, host_b.pool, volume_name(name)) == sums[name]
            good = (
                there is not None
                and there.state is VmState.RUNNING
                and a.find_vm(uuid) is None
                and a.find_volume(host_a.pool, volume_name(name)) is None
                and same_disk
            )
            ok = ok and good
            print(
                f"  {name}: {'OK ' if good else 'BAD'} uuid={uuid} running on {host_b.name}="
                f"{there is not None and there.state is VmState.RUNNING} macs={there.macs if there else ()} "
                f"disk sha256 equal={same_disk} gone from {host_a.name}={a.find_vm(uuid) is None}"
            )
    return ok


def run_demo(*, state_dir: Path | None = None, keep: bool = False) -> int:
    configure_logging("console", stream=sys.stdout)
    base = (state_dir or Path(tempfile.mkdtemp(prefix="evacuator-demo-"))).resolve()
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ExitStack() as cleanup:
        if not keep:
            cleanup.callback(shutil.rmtree, base, ignore_errors=True)
        broker = ensure_broker(base / "broker")
        if broker.private:
            cleanup.callback(stop_private_broker, base / "broker")
        lab = LabHosts(base / "hosts", names=("host-a", "host-b"), base_port=free_port_pair())
        host_a, host_b = lab.start()
        cleanup.callback(lab.stop)

        tenant, password = f"demo-shop-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
        provision_tenant(tenant, password, rabbitmqctl=broker.rabbitmqctl)
        cleanup.callback(remove_tenant, tenant, rabbitmqctl=broker.rabbitmqctl)

        rng = random.Random(7)
        uuids: dict[str, str] = {}
        for name, window, mac in VMS:
            uuids[name] = create_vm(host_a.socket_uri, host_a.pool, name=name, tenant=tenant,
                                    window_seconds=window, disk_bytes=64 * MIB, data=rng.randbytes(4 * MIB),
                                    mac=mac)  # fmt: skip
            log.info("demo_vm_created", vm_name=name, host=host_a.name, window_seconds=window, tenant=tenant)
        sums = {name: sha256_of_volume(host_a.uri, host_a.pool, volume_name(name)) for name in uuids}

        sensor = HeatableHwmon(base / "sys", celsius=45.0)
        runtime = build_runtime(_settings(base, host_a, host_b, broker))
        runtime.start()
        cleanup.callback(runtime.stop)
        stop = threading.Event()
        poller = threading.Thread(target=runtime.poll_until, args=(stop,), name="demo-poller", daemon=True)
        poller.start()
        cleanup.callback(stop.set)

        client = cleanup.enter_context(TenantClient(_tenant_url(broker, tenant, password), tenant))
        time.sleep(1.0)
        log.info(
            "demo_sensor_heated", sensor="coretemp Package id 0", celsius=97.0, threshold=THRESHOLD_CELSIUS
        )
        sensor.set_celsius(97.0)
        _tenant_side(client, host_a.name, timeout_seconds=180)

        print(f"\nresult after {time.monotonic() - started:.1f} s ({datetime.now(UTC):%H:%M:%S} UTC):")
        ok = _check(host_a, host_b, uuids, sums)
        print("demo " + ("succeeded" if ok else "FAILED"))
        return 0 if ok else 1
    return 1  # unreachable: the with block returns; kept for type checkers that do not see it


def main(args: argparse.Namespace) -> int:
    return run_demo(state_dir=Path(args.state_dir) if args.state_dir else None, keep=args.keep)
