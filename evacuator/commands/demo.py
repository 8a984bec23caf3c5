"""`evacuator demo`: two local hypervisors, each with its own daemon, a tenant, a heated sensor and a real
evacuation, told one line per step; every daemon's JSON log kept in one file."""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

from evacuator.commands.demo_output import JsonLog, teller_for
from evacuator.commands.demo_story import Story, Tone
from evacuator.commands.demo_table import Landing, closing_table
from evacuator.commands.demo_tenant import play_tenant
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.broker import ensure_broker, stop_private_broker
from evacuator.lab.daemons import LabDaemon, daemon_settings, write_settings
from evacuator.lab.host_users import HostUser, LabVhost, lab_users, lab_vhost, write_password
from evacuator.lab.hosts import LabHost, LabHosts, free_port_pair
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.logs import configure_logging
from notifiers.tenant import TenantClient

MIB = 1 << 20
HOSTS = ("host-a", "host-b")
THRESHOLD_CELSIUS = 90.0
HOT_CELSIUS = 97.0
VMS = (  # name, registered preprocessing window, MAC; the tenant answers "ready" for the first one only
    ("shop-web", 120, "52:54:00:de:00:01"),
    ("shop-db", 8, "52:54:00:de:00:02"),
)
# What the demo's daemons do differently from the defaults: a sensor read twice a second, three hot samples
# for a verdict, and a guest that ignores ACPI (the lab's have no OS) forced off after 3 s.
OVERRIDES: dict[str, dict[str, Any]] = {
    "monitors": {"poll_interval_seconds": 0.5,
                 "temperature": {"threshold_celsius": THRESHOLD_CELSIUS, "consecutive_samples": 3}},
    "evacuation": {"default_window_seconds": 60, "shutdown_timeout_seconds": 3},
    "host_view": {"interval_seconds": 1.0},
    # The lab's hosts share this machine's few CPUs: each offers its guests more vCPUs than it has, or the
    # guard rails would find no room in the cloud for host-a's VMs (an admin sets this per host likewise).
    "placement": {"guest_vcpus": 16},
}  # fmt: skip
TENANT_TIMEOUT_SECONDS = 180.0


def _log_path() -> Path:
    """Outside the demo's state directory, which is removed at the end: the log is what stays."""
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    return Path(tempfile.gettempdir()) / f"evacuator-demo-{stamp}-{os.getpid()}.jsonl"


def _host_files(
    base: Path, hosts: tuple[LabHost, ...], vhost: LabVhost
) -> list[tuple[HostUser, HeatableHwmon]]:
    """Each host's sensors (a sysfs tree, cool), broker password and settings file, as an admin writes it."""
    made = []
    for host in hosts:
        home = base / host.name
        password = write_password(home / "broker.password")
        sensor = HeatableHwmon(home / "sys", celsius=45.0)
        config = write_settings(home / "evacuator.yaml", daemon_settings(
            host, [peer for peer in hosts if peer is not host], vhost=vhost, password_file=password,
            sysfs_root=home / "sys", state_dir=home / "state", overrides=OVERRIDES,
        ))  # fmt: skip
        made.append((HostUser(name=host.name, config=config, password_file=password), sensor))
    return made


def _start_daemons(
    cleanup: ExitStack, users: list[HostUser], story: Story, journal: JsonLog
) -> list[LabDaemon]:
    """Each host's daemon, host-a's first: it hears host-b's first state the moment host-b publishes it."""

    def tell(who: str, raw: str) -> None:
        story.event(who, journal.line(who, raw))

    daemons = [LabDaemon(user.name, user.config, tell) for user in users]

    def stop_all() -> None:
        # host-a first, as at the end: its daemon still has host-b's to release its claims to.
        for daemon in daemons:
            daemon.stop()

    cleanup.callback(stop_all)
    for daemon in daemons:
        daemon.start()
    return daemons


def _vms(host: LabHost, tenant: str) -> tuple[dict[str, str], dict[str, str]]:
    """The tenant's VMs on `host`, with known bytes on their disks: uuid -> name, and name -> sha256."""
    rng = random.Random(7)
    names = {}
    for name, window, mac in VMS:
        uuid = create_vm(host.socket_uri, host.pool, name=name, tenant=tenant, window_seconds=window,
                         disk_bytes=64 * MIB, data=rng.randbytes(4 * MIB), mac=mac)  # fmt: skip
        names[uuid] = name
    sums = {name: sha256_of_volume(host.uri, host.pool, volume_name(name)) for name in names.values()}
    return names, sums


def _tenant_url(vhost: LabVhost, tenant: str, password: str) -> str:
    parts = urlsplit(vhost.url(tenant))
    netloc = f"{quote(tenant, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _landings(
    hosts: tuple[LabHost, ...], names: Mapping[str, str], sums: Mapping[str, str]
) -> dict[str, Landing]:
    """Where each VM (uuid: name) is now, read from every host's libvirt, and what is left on the first."""
    by_name = {host.name: host for host in hosts}
    source = hosts[0]
    landings = {}
    with ExitStack() as stack:
        opened = {h.name: stack.enter_context(open_libvirt_host(h.name, h.uri, h.pool)) for h in hosts}
        for uuid, name in names.items():
            where = {host: vm.state for host, libvirt in opened.items()
                     if (vm := libvirt.find_vm(uuid)) is not None}  # fmt: skip
            running = [host for host, state in where.items() if state is VmState.RUNNING]
            disk_left = opened[source.name].find_volume(source.pool, volume_name(name)) is not None
            there = by_name[running[0]] if len(running) == 1 else None
            equal = (
                there is not None and sha256_of_volume(there.uri, there.pool, volume_name(name)) == sums[name]
            )
            left = (*(("the VM",) if source.name in where else ()), *(("its disk",) if disk_left else ()))
            landings[uuid] = Landing(name=name, source=source.name, where=where, left_on_source=left,
                                     checksum_equal=equal)  # fmt: skip
    return landings


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # As ^C does: the cleanup runs (a CI job's timeout sends SIGTERM, and must leave no VM, daemon or user).
    raise SystemExit(128 + signum)


def run_demo(*, state_dir: Path | None = None, keep: bool = False, out: TextIO | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    teller = teller_for(out or sys.stdout)
    base = (state_dir or Path(tempfile.mkdtemp(prefix="evacuator-demo-"))).resolve()
    base.mkdir(parents=True, exist_ok=True)
    with JsonLog(_log_path()) as journal:
        # The demo's own events (the lab's) go to the file too: the terminal shows the story only.
        configure_logging("json", stream=journal.stream("demo"))
        teller.note(f"evacuator demo: two hypervisors, each with its own daemon (times UTC); the full JSON "
                    f"log is {journal.path}")  # fmt: skip
        story = Story(teller)
        started = time.monotonic()
        try:
            with ExitStack() as cleanup:
                if not keep:
                    cleanup.callback(shutil.rmtree, base, ignore_errors=True)
                ok = _evacuate(cleanup, base, story, journal)
        except (KeyboardInterrupt, SystemExit) as exc:  # ^C, or SIGTERM (_exit_on_sigterm): torn down by now
            teller.note(
                f"\ndemo interrupted; all it started is torn down; the full JSON log is {journal.path}"
            )
            return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        story.say("lab", "torn down: VMs, daemons, libvirtds, broker users and vhost"
                  + (f"; state kept in {base}" if keep else ", state directory"))  # fmt: skip
        teller.note(f"\ndemo {'succeeded' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s; "
                    f"the full JSON log is {journal.path}")  # fmt: skip
    return 0 if ok else 1


def _evacuate(cleanup: ExitStack, base: Path, story: Story, journal: JsonLog) -> bool:
    """The lab up, the evacuation told as it happens, the closing table: whether it all went as shown.
    Everything it starts is undone by `cleanup`, in reverse order."""
    broker = ensure_broker(base / "broker")
    if broker.private:
        cleanup.callback(stop_private_broker, base / "broker")
    lab = LabHosts(base / "hosts", names=HOSTS, base_port=free_port_pair())
    cleanup.callback(lab.stop)
    hosts = lab.start()
    where = urlsplit(broker.url)
    story.say("lab", f"{' and '.join(HOSTS)} up, each its own libvirtd (QEMU); broker on "
              f"{where.hostname}:{where.port}")  # fmt: skip
    vhost = cleanup.enter_context(lab_vhost(broker, "evacuator-demo"))
    files = _host_files(base, hosts, vhost)
    users = [user for user, _ in files]
    tenant, password = f"demo-shop-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    # Said before it is done: rabbitmqctl takes seconds a call, and a silent terminal looks hung.
    story.say("lab", f"broker vhost {vhost.name}: making users {', '.join(f'host.{u.name}' for u in users)} "
              f"(`evacuator host add`) and tenant {tenant}")  # fmt: skip
    cleanup.enter_context(lab_users(vhost, users, {tenant: password}))
    names, sums = _vms(hosts[0], tenant)
    story.name_vms(names)
    story.say("lab", f"tenant {tenant} runs " + " and ".join(f"{n} (window {w} s)" for n, w, _ in VMS)
              + f" on {hosts[0].name}")  # fmt: skip
    daemons = _start_daemons(cleanup, users, story, journal)
    client = cleanup.enter_context(TenantClient(_tenant_url(vhost, tenant, password), tenant))
    client.next_notice(0.5)  # subscribes: the first notice must not come before the tenant listens
    story.say("lab", f"{hosts[0].name}'s coretemp Package id 0 heated to {HOT_CELSIUS:.0f} °C "
              f"(threshold {THRESHOLD_CELSIUS:.0f} °C)", Tone.WARN)  # fmt: skip
    files[0][1].set_celsius(HOT_CELSIUS)
    told = play_tenant(client, story, host=hosts[0].name, ready_for=VMS[0][0], vm_count=len(VMS),
                       timeout_seconds=TENANT_TIMEOUT_SECONDS)  # fmt: skip
    exits = {daemon.name: daemon.stop() for daemon in daemons}
    stopped = all(code == 0 for code in exits.values())
    story.say("lab", "daemons stopped (SIGTERM): " + ", ".join(f"{h} exit {c}" for h, c in exits.items()),
              Tone.PLAIN if stopped else Tone.BAD)  # fmt: skip
    return closing_table(story, _landings(hosts, names, sums), told) and stopped


def main(args: argparse.Namespace) -> int:
    return run_demo(state_dir=Path(args.state_dir) if args.state_dir else None, keep=args.keep)
