"""One lab host's private libvirtd: its root directory and configuration, readiness, pool, and clean-up."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libvirt

from evacuator.errors import LabError

_READY_TIMEOUT_SECONDS = 60.0
_HOST_UUID_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-4e0f-9c55-0e7a11ab0001")

# Becomes a child subreaper so that QEMU processes orphaned by libvirtd are reaped at once (PID 1 here reaps
# late, which makes `destroy` take seconds), runs libvirtd in the foreground, on its exit kills what is left.
REAPER = r"""
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
daemon = os.fork()
if daemon == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(daemon, signal.SIGTERM))
def children():
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            yield int(pid)
while True:
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        break
    if pid == daemon:
        for child in children():
            os.kill(child, signal.SIGKILL)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class LabHost:
    """One running lab hypervisor host and where its state lives."""

    name: str
    uri: str
    socket_uri: str  # the same daemon over its own unix socket: cannot be mistaken for another lab's
    pool: str
    pool_path: Path
    root: Path


def require_tools() -> None:
    tools = ("libvirtd", "virsh", "qemu-system-x86_64", "unshare", "mount")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"lab hosts need {', '.join(missing)} on PATH: run scripts/setup "
            "(apt: libvirt-daemon-system libvirt-clients qemu-system-x86 util-linux)"
        )
    if os.geteuid() != 0:
        raise LabError("lab hosts run privileged libvirtd daemons in private mount namespaces: run as root")


def prepare_root(host: LabHost, *, port: int, peers: Sequence[str]) -> None:
    for sub in ("run", "lib", "log", "pool"):
        (host.root / sub).mkdir(parents=True, exist_ok=True)
    etc = host.root / "etc"
    if not etc.exists():
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        for leftover in ("qemu/*.xml", "qemu/autostart", "qemu/networks/*.xml", "qemu/networks/autostart",
                         "storage"):
            for path in etc.glob(leftover):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    host_uuid = uuid.uuid5(_HOST_UUID_NAMESPACE, str(host.root))
    (etc / "libvirtd.conf").write_text(
        f'unix_sock_dir = "/run/libvirt"\nhost_uuid = "{host_uuid}"\nlisten_tls = 0\nlisten_tcp = 1\n'
        f'listen_addr = "127.0.0.1"\ntcp_port = "{port}"\nauth_tcp = "none"\nauth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\nlog_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
    )
    # Each lab host its own block of QEMU migration ports, chosen by its libvirtd port (unique on this
    # machine), not by its index: two labs at once (xdist workers) would hand their hosts the same ports, and
    # libvirt's check that a port is free races the other lab's QEMU binding it ("Address already in use").
    migration_port_min = 49152 + 64 * (port % 128)
    (etc / "qemu.conf").write_text(
        'stdio_handler = "file"\ncgroup_controllers = [ ]\nuser = "root"\ngroup = "root"\n'
        f"remember_owner = 0\nmigration_port_min = {migration_port_min}\n"
        f"migration_port_max = {migration_port_min + 63}\n"
    )
    etc_hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    (host.root / "reaper.py").write_text(REAPER)
    (host.root / "hosts").write_text(f"127.0.0.1 localhost {' '.join(peers)}\n{etc_hosts}")


def reaper_pid(host: LabHost) -> int | None:
    """The pid of this host's running supervisor, or None; a zombie or a reused pid counts as not running."""
    try:
        pid = int((host.root / "reaper.pid").read_text())
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # An empty cmdline is a process in the middle of execve (unshare -> sh -> python): still ours.
    if "\nState:\tZ" in status or (cmdline and b"libvirtd" not in cmdline):
        return None
    return pid


def wait_gone(pid: int, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return True
        except ChildProcessError:
            status = Path(f"/proc/{pid}/status")
            if not status.exists() or "\nState:\tZ" in status.read_text():
                return True
        time.sleep(0.05)
    return False


def virsh(host: LabHost, *args: str, timeout_seconds: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", host.socket_uri, *args],
        capture_output=True, text=True, timeout=timeout_seconds, check=False,
    )


def wait_ready(host: LabHost) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while True:
        if reaper_pid(host) is None:
            raise LabError(f"libvirtd of lab host {host.name} exited at start: see "
                           f"{host.root / 'libvirtd.out'} and {host.root / 'log' / 'libvirtd.log'}")
        result = virsh(host, "uri", timeout_seconds=10.0)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise LabError(f"lab host {host.name} did not answer on {host.socket_uri} within "
                           f"{_READY_TIMEOUT_SECONDS:.0f} s: {result.stderr.strip()}")
        time.sleep(0.1)


def ensure_pool(host: LabHost) -> None:
    pool_xml = host.root / "pool.xml"
    pool_xml.write_text(
        f"<pool type='dir'><name>{host.pool}</name><target><path>{host.pool_path}</path></target></pool>"
    )
    if virsh(host, "pool-info", host.pool).returncode != 0:
        check(host, virsh(host, "pool-define", str(pool_xml)))
    if "running" not in virsh(host, "pool-info", host.pool).stdout:
        check(host, virsh(host, "pool-start", host.pool))
    check(host, virsh(host, "pool-autostart", host.pool))


def check(host: LabHost, result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise LabError(f"lab host {host.name}: `{' '.join(map(str, result.args))}` failed: "
                       f"{result.stderr.strip()}")


def destroy_domains(host: LabHost) -> None:
    """Best effort: a daemon that no longer answers is killed with its QEMU children by the reaper anyway."""
    try:
        listed = virsh(host, "list", "--name", timeout_seconds=10.0)
    except subprocess.TimeoutExpired:
        return
    for name in listed.stdout.split():
        virsh(host, "destroy", name, timeout_seconds=10.0)


def pool_volumes(host: LabHost) -> list[str]:
    """The names of the volumes in the host's pool, freshly listed (the pool is refreshed first)."""
    conn = libvirt.open(host.socket_uri)
    try:
        pool = conn.storagePoolLookupByName(host.pool)
        pool.refresh(0)
        return sorted(vol.name() for vol in pool.listAllVolumes(0))
    finally:
        conn.close()


def wipe_host(host: LabHost) -> None:
    """Destroys and undefines every domain and deletes every volume of the host's pool: a clean slate."""
    try:
        conn = libvirt.open(host.socket_uri)
    except libvirt.libvirtError as exc:
        raise LabError(f"lab host {host.name}: cannot connect to {host.socket_uri}: {exc}") from exc
    try:
        for dom in conn.listAllDomains(0):
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        pool = conn.storagePoolLookupByName(host.pool)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
    except libvirt.libvirtError as exc:
        raise LabError(f"lab host {host.name}: cannot wipe: {exc}") from exc
    finally:
        conn.close()
