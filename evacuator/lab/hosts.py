"""Runs several independent libvirt "hypervisor hosts" on one machine, one private libvirtd per host."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import structlog

from evacuator.errors import LabError
from evacuator.lab.hostroot import (
    LabHost,
    destroy_domains,
    ensure_pool,
    pool_volumes,
    prepare_root,
    reaper_pid,
    require_tools,
    wait_gone,
    wait_ready,
    wipe_host,
)

__all__ = ["POOL_NAME", "LabHost", "LabHosts", "free_port_pair", "pool_volumes", "wipe_host"]

log = structlog.get_logger(__name__)

POOL_NAME = "evacuator"
_STOP_TIMEOUT_SECONDS = 10.0
_MAX_SOCKET_PATH_CHARS = 100
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PRIVATE_DIRS = {
    "etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt"
}

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
        require_tools()
        started = time.monotonic()
        try:
            for index, host in enumerate(self._hosts):
                if reaper_pid(host) is None:
                    self._launch(index, host)
            for host in self._hosts:
                wait_ready(host)
                ensure_pool(host)
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
        pid = reaper_pid(host)
        if pid is None and launched is not None and launched.poll() is None:
            pid = launched.pid  # ours for sure, even if /proc could not tell
        if pid is not None:
            destroy_domains(host)
            os.kill(pid, signal.SIGTERM)
            if not wait_gone(pid, _STOP_TIMEOUT_SECONDS):
                os.killpg(pid, signal.SIGKILL)
                wait_gone(pid, _STOP_TIMEOUT_SECONDS)
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
        prepare_root(host, port=port, peers=self._names)
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
