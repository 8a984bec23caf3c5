"""A RabbitMQ cluster of private loopback nodes on this machine for the tests: start, kill a node, stop."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from evacuator.errors import LabError
from evacuator.lab.commands import run_checked

log = structlog.get_logger(__name__)

_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# Not /usr/sbin/rabbitmqctl: as root, Debian's wrapper switches to the rabbitmq user and its HOME, whose
# Erlang cookie is the system node's, not this cluster's (evacuator/lab/broker.py says the same).
_CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
_START_TIMEOUT_SECONDS = 90
_COMMAND_TIMEOUT_SECONDS = _START_TIMEOUT_SECONDS + 30
_GONE_TIMEOUT_SECONDS = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterNode:
    """One node: its Erlang name, its loopback AMQP and distribution ports, its own data directory."""

    index: int
    name: str
    amqp_port: int
    dist_port: int
    base_dir: Path

    @property
    def url(self) -> str:
        """amqp URL of this node as the admin user guest (allowed from loopback only)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "rabbitmq.pid"


class LabCluster:
    """`size` nodes named `<prefix>-1@localhost` ..., on their own ports, sharing one Erlang cookie (in
    `state_dir`/home, the HOME of the nodes and of rabbitmqctl), listening on 127.0.0.1 only (AMQP,
    distribution, epmd), joined with `rabbitmqctl join_cluster` to the first.

    The nodes run detached: stop() (or the process that started them) must end them; kill() ends one as a
    crash would (SIGKILL), restart() brings it back with its data, and it rejoins the cluster by itself."""

    def __init__(self, state_dir: Path, *, size: int = 3, prefix: str = "rabbit-evac") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.state_dir = state_dir
        self.home = state_dir / "home"
        self.nodes = tuple(
            ClusterNode(index=i, name=f"{prefix}-{i}@localhost", amqp_port=_free_port(),
                        dist_port=_free_port(), base_dir=state_dir / f"node-{i}")
            for i in range(1, size + 1)
        )  # fmt: skip

    @property
    def urls(self) -> tuple[str, ...]:
        """Every node's guest URL, node 1 first."""
        return tuple(node.url for node in self.nodes)

    def node(self, index: int) -> ClusterNode:
        """The node numbered `index` (1-based, as in its name)."""
        return self.nodes[index - 1]

    def rabbitmqctl(self, index: int | None = None) -> tuple[str, ...]:
        """rabbitmqctl aimed at node `index`, or (None) at the first node that runs."""
        if index is None:
            index = next((n.index for n in self.nodes if self.running(n.index)), 1)
        return ("env", f"HOME={self.home}", _CTL, "-n", self.node(index).name)

    def start(self) -> None:
        """Start every node at once, wait for all, then join the others to node 1 (at once too)."""
        if not Path(_SERVER).exists():
            raise LabError(f"no {_SERVER}: run scripts/setup")
        self._prepare()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: self._launch(node), self.nodes))
        booted = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: self._join(node, self.nodes[0]), self.nodes[1:]))
        self._check_members()
        log.info("lab_cluster_started", nodes=[n.name for n in self.nodes],
                 boot_seconds=round(booted - started, 1), join_seconds=round(time.monotonic() - booted, 1))

    def _join(self, node: ClusterNode, first: ClusterNode) -> None:
        self._ctl(node.index, "stop_app")
        self._ctl(node.index, "join_cluster", first.name)
        self._ctl(node.index, "start_app")
        self._ctl(node.index, "await_startup", "--timeout", str(_START_TIMEOUT_SECONDS))

    def stop(self) -> None:
        """Shut every node down (a SIGKILL for one that does not go) and delete the cluster's files."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: self._shut_down(node), self.nodes))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        log.info("lab_cluster_stopped", state_dir=str(self.state_dir))

    def kill(self, index: int) -> float:
        """Kill node `index`'s Erlang VM with SIGKILL, as a crash would end it (the kernel resets its TCP
        connections at once, where a powered-off host would leave them silent); returns time.monotonic()
        once the process is gone."""
        pid = self._pid(self.node(index))
        if pid is None or not _alive(pid):
            raise LabError(f"node {self.node(index).name} does not run")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        gone = time.monotonic()
        log.info("lab_cluster_node_killed", node=self.node(index).name, pid=pid)
        return gone

    def restart(self, index: int) -> None:
        """Start node `index` again with its data; it rejoins the cluster."""
        node = self.node(index)
        if self.running(index):
            raise LabError(f"node {node.name} runs already")
        node.pid_file.unlink(missing_ok=True)  # `rabbitmqctl wait` would read the dead node's pid
        self._launch(node)
        self._ctl(index, "await_startup", "--timeout", str(_START_TIMEOUT_SECONDS))

    def running(self, index: int) -> bool:
        """Whether node `index`'s Erlang VM is alive (not whether it serves yet)."""
        pid = self._pid(self.node(index))
        return pid is not None and _alive(pid)

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            # One cookie: the nodes and the CLI trust each other, and nothing else on the machine.
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)  # Erlang refuses a cookie file others may read
        for node in self.nodes:
            node.base_dir.mkdir(parents=True, exist_ok=True)
            (node.base_dir / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\nloopback_users.guest = true\n"
            )

    def _environment(self, node: ClusterNode) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_CONFIG_FILE": str(node.base_dir / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(node.base_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.base_dir / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.base_dir / "enabled_plugins"),
            # Loopback only: epmd is asked on 127.0.0.1 and the distribution listens there alone.
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _launch(self, node: ClusterNode) -> None:
        env = self._environment(node)
        log.info("lab_cluster_node_starting", node=node.name)
        _run([_SERVER, "-detached"], env=env)
        _run([*self.rabbitmqctl(node.index), "wait", "--timeout", str(_START_TIMEOUT_SECONDS),
              str(node.pid_file)], env=env)  # fmt: skip

    def _shut_down(self, node: ClusterNode) -> None:
        pid = self._pid(node)
        if pid is None or not _alive(pid):
            return
        done = subprocess.run([*self.rabbitmqctl(node.index), "shutdown"], capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT_SECONDS, check=False)  # fmt: skip
        if done.returncode != 0 and _alive(pid):
            log.warning("lab_cluster_node_killed_at_stop", node=node.name, output=done.stderr.strip()[-300:])
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)

    def _ctl(self, index: int, *args: str) -> str:
        return _run([*self.rabbitmqctl(index), *args], env=self._environment(self.node(index)))

    def _check_members(self) -> None:
        status = json.loads(self._ctl(1, "cluster_status", "--formatter", "json"))
        running = set(status.get("running_nodes", []))
        missing = sorted({n.name for n in self.nodes} - running)
        if missing:
            raise LabError(f"the lab cluster formed without {', '.join(missing)} (running: {sorted(running)})"
                           )  # fmt: skip

    @staticmethod
    def _pid(node: ClusterNode) -> int | None:
        try:
            return int(node.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


def _run(command: list[str], *, env: dict[str, str]) -> str:
    return run_checked(command, env=env, timeout_seconds=_COMMAND_TIMEOUT_SECONDS)


def _alive(pid: int) -> bool:
    """Whether `pid` runs: `kill -0` is true for a zombie too, so its state is read (RECIPES)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state != "Z"


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + _GONE_TIMEOUT_SECONDS
    while _alive(pid):
        if time.monotonic() > deadline:
            raise LabError(f"process {pid} did not end within {_GONE_TIMEOUT_SECONDS} s")
        time.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
