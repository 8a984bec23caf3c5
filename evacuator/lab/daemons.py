"""Lab hosts' own evacuator daemons, each `evacuator run` in a process of its own as on a hypervisor: their
settings files, and their JSON logs handed line by line to whoever tells the story."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from evacuator.errors import LabError
from evacuator.lab.host_users import LabVhost
from evacuator.lab.hosts import LabHost
from evacuator.peers.host_users import host_user

log = structlog.get_logger(__name__)

LineSink = Callable[[str, str], None]  # (host name, one line of its log, newline stripped)

_TAIL_LINES = 40


def daemon_settings(
    host: LabHost,
    peers: Sequence[LabHost],
    *,
    vhost: LabVhost,
    password_file: Path,
    sysfs_root: Path,
    state_dir: Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """`host`'s settings as an admin would write them: its own broker user (`host.<name>`, password in a
    file) in the lab's vhost, `peers` trusted as their own users, the data channel on loopback. Each section
    of `overrides` is merged over the section it names."""
    settings: dict[str, Any] = {
        # Its own libvirt over the unix socket, as a daemon on the hypervisor reaches it; peers over TCP.
        "host": {
            "name": host.name,
            "libvirt_uri": host.socket_uri,
            "storage_pool": host.pool,
            "migration_address": "127.0.0.1",
        },
        "peers": [{"name": p.name, "libvirt_uri": p.uri, "storage_pool": p.pool} for p in peers],
        "monitors": {"sysfs_root": str(sysfs_root)},
        "broker": {"url": vhost.url(host_user(host.name)), "password_file": str(password_file)},
        # Any free port: the lab shares the machine with whatever else listens on it.
        "data_channel": {"listen_address": "127.0.0.1", "port": 0},
        "metrics": {"listen_address": "127.0.0.1", "port": 0},
        "state_dir": str(state_dir),
        "logging": {"format": "json", "level": "info"},
    }
    for section, values in (overrides or {}).items():
        base = settings.get(section)
        settings[section] = {**base, **values} if isinstance(base, dict) else dict(values)
    return settings


def write_settings(path: Path, settings: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(settings), sort_keys=False), encoding="utf-8")
    return path


class LabDaemon:
    """One host's `evacuator run --config FILE`; every line it logs goes to `sink`, from a reader thread."""

    def __init__(self, name: str, config: Path, sink: LineSink) -> None:
        self.name = name
        self.config = config
        self._sink = sink
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ready = False
        self._settled = threading.Event()  # said daemon_ready, or its log ended (it exited)
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)

    def start(self, timeout_seconds: float = 60.0) -> None:
        """Starts the daemon and returns once it says `daemon_ready` (sensors, libvirt and broker up)."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "evacuator.cli", "run", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # a ^C in the terminal reaches the demo only: it stops them in order
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, args=(self._process,),
                                        name=f"lab-daemon-{self.name}", daemon=True)  # fmt: skip
        self._reader.start()
        self._settled.wait(timeout_seconds)
        if not self._ready:
            code = self._process.poll()
            self.stop()
            said = f"exited with {code}" if code is not None else f"was not ready in {timeout_seconds:.0f} s"
            raise LabError(f"{self.name}'s daemon {said}; its last lines:\n" + "\n".join(self._tail))
        log.info("lab_daemon_ready", host=self.name, pid=self._process.pid)

    def stop(self, timeout_seconds: float = 30.0) -> int | None:
        """SIGTERM, as `systemctl stop` sends; its exit code (None: it had to be killed). Safe twice."""
        process = self._process
        if process is None:
            return None
        code: int | None
        process.terminate()
        try:
            code = process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_seconds)
            code = None
        self._process = None  # only now: a stop interrupted (^C) is done again by the next one
        if self._reader is not None:
            self._reader.join(timeout=timeout_seconds)  # its last lines reach the sink before we go on
        if process.stderr is not None and not (self._reader is not None and self._reader.is_alive()):
            process.stderr.close()  # never under a reader still in it (a grandchild may hold the pipe)
        log.info("lab_daemon_stopped", host=self.name, exit_code=code)
        return code

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.rstrip("\n")
            self._tail.append(line)
            if not self._ready and _event_name(line) == "daemon_ready":
                self._ready = True
                self._settled.set()
            self._sink(self.name, line)
        self._settled.set()  # a start() still waiting learns that the daemon is gone


def _event_name(line: str) -> str | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event.get("event") if isinstance(event, dict) else None
