"""Runs several independent libvirt "hypervisor hosts" on one machine, one private libvirtd per host."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import libvirt
import structlog

from evacuator.errors import LabError

log = structlog.get_logger(__name__)

POOL_NAME = "evacuator"
_READY_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 10.0
_MAX_SOCKET_PATH_CHARS = 100
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_UUID_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-4e0f-9c55-0e7a11ab0001")
_PRIVATE_DIRS = {
    "etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt"
}

# Becomes a child subreaper so that QEMU processes orphaned by libvirtd are reaped at once (PID 1 here reaps
# late, which makes `destroy` take seconds), runs libvirtd in the foreground, on its exit kills what is left.
_REAPER = r"""
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


class LabHosts:
    """Starts and stops a set of lab hosts under one base directory; a context manager."""

    def __init__(
        self, base_dir: Path, names: Sequence[str] = ("host-a", "host-b"), base_port: int = 16600,
        pool_bytes: Mapping[str, int] | None = None,
    ) -> None:
        if len(set(names)) != len(names) or not names or not all(map(_HOSTNAME.fullmatch, names)):
            raise LabError(f"lab host names must be distinct hostnames ([a-z0-9-]), got {list(names)}")
        self._base_dir = base_dir.resolve()
        self._names = tuple(names)
        self._base_port = base_port
        # Hosts whose pool is a tmpfs of this size: a destination that runs out of room, for real.
        self._pool_bytes = dict(pool_bytes or {})
        self._hosts = tuple(self._describe(index, name) for index, name in enumerate(self._names))
        self._launched: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return self._hosts

    def __enter__(self) -> tuple[LabHost, ...]:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> tuple[LabHost, ...]:
        """Starts every host that is not already running and waits until each answers; returns them all."""
        _require_tools()
        started = time.monotonic()
        try:
            for index, host in enumerate(self._hosts):
                if _reaper_pid(host) is None:
                    self._launch(index, host)
            for host in self._hosts:
                _wait_ready(host)
                _ensure_pool(host)
        except BaseException:
            self.stop()
            raise
        log.info("lab_hosts_started", hosts=list(self._names), seconds=round(time.monotonic() - started, 3))
        return self._hosts

    def stop(self) -> None:
        """Destroys every domain, stops every daemon and its leftovers; safe twice or after a crash."""
        for host in self._hosts:
            self._stop_one(host)

    def _stop_one(self, host: LabHost) -> None:
        launched = self._launched.pop(host.name, None)
        pid = _reaper_pid(host)
        if pid is None and launched is not None and launched.poll() is None:
            pid = launched.pid  # ours for sure, even if /proc could not tell
        if pid is not None:
            _destroy_domains(host)
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, _STOP_TIMEOUT_SECONDS):
                os.killpg(pid, signal.SIGKILL)
                _wait_gone(pid, _STOP_TIMEOUT_SECONDS)
            (host.root / "reaper.pid").unlink(missing_ok=True)
            log.info("lab_host_stopped", host=host.name)

    def stop_host(self, name: str) -> None:
        """Stops one host's daemon (its clients' connections drop at once); start() brings it back."""
        for host in self._hosts:
            if host.name == name:
                self._stop_one(host)

    def _describe(self, index: int, name: str) -> LabHost:
        root = self._base_dir / name
        port = self._base_port + index
        return LabHost(
            name=name,
            uri=f"qemu+tcp://127.0.0.1:{port}/system",
            socket_uri=f"qemu+unix:///system?socket={root / 'run' / 'libvirt-sock'}",
            pool=POOL_NAME,
            pool_path=root / "pool",
            root=root,
        )

    def _launch(self, index: int, host: LabHost) -> None:
        port = self._base_port + index
        try:
            with socket.socket() as probe:
                # As libvirtd does: a closed connection lingering in TIME_WAIT does not make a port taken.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise LabError(f"lab host {host.name}: TCP port {port} on 127.0.0.1 is taken ({exc.strerror}): "
                           "another lab or service uses it, choose another base_port") from exc
        if len(str(host.root / "run" / "libvirt-sock")) > _MAX_SOCKET_PATH_CHARS:
            raise LabError(f"lab host {host.name}: {host.root} is too deep for a unix socket path")
        _prepare_root(host, index=index, port=port, peers=self._names)
        mounts = " && ".join(
            [f"mkdir -p {target} && mount --bind {host.root / source} {target}"
             for source, target in _PRIVATE_DIRS.items()]
            + [f"mount --bind {host.root / 'hosts'} /etc/hosts"]
            + ([f"mount -t tmpfs -o size={self._pool_bytes[host.name]} tmpfs {host.pool_path}"]
               if host.name in self._pool_bytes else [])
        )
        reaper = shlex.quote(str(host.root / "reaper.py"))
        script = (
            f"{mounts} && hostname {host.name} && exec {shlex.quote(sys.executable)} {reaper} "
            f"libvirtd -l -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
        )
        with (host.root / "libvirtd.out").open("ab") as out:
            process = subprocess.Popen(
                ["unshare", "-m", "-u", "--propagation", "private", "--", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._launched[host.name] = process
        (host.root / "reaper.pid").write_text(f"{process.pid}\n")
        log.info("lab_host_launched", host=host.name, uri=host.uri, pid=process.pid)


def _require_tools() -> None:
    tools = ("libvirtd", "virsh", "qemu-system-x86_64", "unshare", "mount")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"lab hosts need {', '.join(missing)} on PATH: run scripts/setup "
            "(apt: libvirt-daemon-system libvirt-clients qemu-system-x86 util-linux)"
        )
    if os.geteuid() != 0:
        raise LabError("lab hosts run privileged libvirtd daemons in private mount namespaces: run as root")


def _prepare_root(host: LabHost, *, index: int, port: int, peers: Sequence[str]) -> None:
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
    migration_port_min = 49152 + 100 * index
    (etc / "qemu.conf").write_text(
        'stdio_handler = "file"\ncgroup_controllers = [ ]\nuser = "root"\ngroup = "root"\n'
        f"remember_owner = 0\nmigration_port_min = {migration_port_min}\n"
        f"migration_port_max = {migration_port_min + 63}\n"
    )
    etc_hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    (host.root / "reaper.py").write_text(_REAPER)
    (host.root / "hosts").write_text(f"127.0.0.1 localhost {' '.join(peers)}\n{etc_hosts}")


def _reaper_pid(host: LabHost) -> int | None:
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


def _wait_gone(pid: int, timeout_seconds: float) -> bool:
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


def _virsh(host: LabHost, *args: str, timeout_seconds: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", host.socket_uri, *args],
        capture_output=True, text=True, timeout=timeout_seconds, check=False,
    )


def _wait_ready(host: LabHost) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while True:
        if _reaper_pid(host) is None:
            raise LabError(f"libvirtd of lab host {host.name} exited at start: see "
                           f"{host.root / 'libvirtd.out'} and {host.root / 'log' / 'libvirtd.log'}")
        result = _virsh(host, "uri", timeout_seconds=10.0)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise LabError(f"lab host {host.name} did not answer on {host.socket_uri} within "
                           f"{_READY_TIMEOUT_SECONDS:.0f} s: {result.stderr.strip()}")
        time.sleep(0.1)


def _ensure_pool(host: LabHost) -> None:
    pool_xml = host.root / "pool.xml"
    pool_xml.write_text(
        f"<pool type='dir'><name>{host.pool}</name><target><path>{host.pool_path}</path></target></pool>"
    )
    if _virsh(host, "pool-info", host.pool).returncode != 0:
        _check(host, _virsh(host, "pool-define", str(pool_xml)))
    if "running" not in _virsh(host, "pool-info", host.pool).stdout:
        _check(host, _virsh(host, "pool-start", host.pool))
    _check(host, _virsh(host, "pool-autostart", host.pool))


def _check(host: LabHost, result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise LabError(f"lab host {host.name}: `{' '.join(map(str, result.args))}` failed: "
                       f"{result.stderr.strip()}")


def _destroy_domains(host: LabHost) -> None:
    """Best effort: a daemon that no longer answers is killed with its QEMU children by the reaper anyway."""
    try:
        listed = _virsh(host, "list", "--name", timeout_seconds=10.0)
    except subprocess.TimeoutExpired:
        return
    for name in listed.stdout.split():
        _virsh(host, "destroy", name, timeout_seconds=10.0)


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


def free_port_pair() -> int:
    """A base port whose successor is free too, so parallel sessions on one machine do not collide."""
    start = 20000 + (os.getpid() * 7) % 20000
    for base in range(start, start + 2000, 2):
        try:
            with socket.socket() as first, socket.socket() as second:
                for probe in (first, second):
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                first.bind(("127.0.0.1", base))
                second.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise LabError("no free pair of TCP ports on 127.0.0.1 for the lab hosts")
