"""A RabbitMQ broker for tests and the demo: the machine's own on 127.0.0.1:5672, else a private node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from evacuator.errors import LabError
from evacuator.lab.commands import run_checked

log = structlog.get_logger(__name__)

SHARED_PORT = 5672
_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# Not /usr/sbin/rabbitmqctl: as root, Debian's wrapper switches to the rabbitmq user, whose HOME holds the
# system node's Erlang cookie, so the private node rejects it ("Invalid challenge reply").
_CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
_START_TIMEOUT_SECONDS = 90
_NODE_FILE = "lab-broker.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class LabBroker:
    """Where the lab broker answers, how to administer it, and whether this module started it.

    `tls_url` is set for a private node started with TLS files: amqps on its own loopback port.
    """

    url: str
    rabbitmqctl: tuple[str, ...]
    private: bool
    tls_url: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerTls:
    """The PEM files a node's TLS listener presents (and the CA that signed them)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_broker(state_dir: Path, *, shared_port: int = SHARED_PORT) -> LabBroker:
    """Use the broker on 127.0.0.1:`shared_port` (guest/guest) if one answers, else start a private node.

    A private node lives in `state_dir` and is reused while it runs; stop it with stop_private_broker().
    """
    if _answers(shared_port):
        log.info("lab_broker_shared", port=shared_port)
        return LabBroker(url=_guest_url(shared_port), rabbitmqctl=("rabbitmqctl",), private=False)
    existing = _read_node_file(state_dir)
    if existing is not None and _answers(_port_of(existing)):
        return existing
    return start_private_broker(state_dir)


def stop_private_broker(state_dir: Path, *, forget: bool = True) -> None:
    """Shut down the private node started in `state_dir`, if any (`shutdown` waits until it is gone).

    With forget=False its data and ports are kept, and resume_private_broker() starts the same node again.
    """
    broker = _read_node_file(state_dir)
    if broker is None:
        return
    done = subprocess.run([*broker.rabbitmqctl, "shutdown"], capture_output=True, text=True, check=False)
    if done.returncode != 0 and _answers(_port_of(broker)):
        raise LabError(f"`rabbitmqctl shutdown` failed ({done.returncode}): {done.stderr.strip()}")
    if forget:
        (state_dir / _NODE_FILE).unlink(missing_ok=True)
    log.info("lab_broker_stopped", state_dir=str(state_dir))


def start_private_broker(state_dir: Path, *, tls: BrokerTls | None = None) -> LabBroker:
    """Start a new loopback-only node in `state_dir` (never the machine's shared broker)."""
    if not Path(_SERVER).exists():
        raise LabError(f"no {_SERVER}: run scripts/setup")
    state_dir.mkdir(parents=True, exist_ok=True)
    amqp_port, dist_port = _free_port(), _free_port()
    lines = [f"listeners.tcp.default = 127.0.0.1:{amqp_port}", "loopback_users.guest = true"]
    tls_port = None
    if tls is not None:
        tls_port = _free_port()
        lines += [
            f"listeners.ssl.default = 127.0.0.1:{tls_port}",
            f"ssl_options.cacertfile = {tls.ca_file}",
            f"ssl_options.certfile = {tls.cert_file}",
            f"ssl_options.keyfile = {tls.key_file}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
    (state_dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
    node = f"evacuator-lab-{amqp_port}@localhost"
    ctl = ("env", f"HOME={state_dir}", _CTL, "-n", node)
    tls_url = None if tls_port is None else f"amqps://guest:guest@127.0.0.1:{tls_port}/%2F"
    broker = LabBroker(url=_guest_url(amqp_port), rabbitmqctl=ctl, private=True, tls_url=tls_url)
    saved = {"url": broker.url, "rabbitmqctl": list(ctl), "tls_url": tls_url, "node": node,
             "dist_port": dist_port}  # fmt: skip
    (state_dir / _NODE_FILE).write_text(json.dumps(saved))
    _launch(state_dir, node, dist_port)
    return broker


def resume_private_broker(state_dir: Path) -> LabBroker:
    """Start again the node stop_private_broker(forget=False) stopped: same ports, users, queues, messages."""
    broker = _read_node_file(state_dir)
    if broker is None:
        raise LabError(f"no private broker was started in {state_dir}")
    saved = json.loads((state_dir / _NODE_FILE).read_text())
    _launch(state_dir, saved["node"], saved["dist_port"])
    return broker


def _launch(state_dir: Path, node: str, dist_port: int) -> None:
    config = state_dir / "rabbitmq.conf"
    pid_file = state_dir / "rabbitmq.pid"
    env = {
        **os.environ,
        "HOME": str(state_dir),  # the Erlang cookie lives here; rabbitmqctl needs the same HOME
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_MNESIA_BASE": str(state_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(state_dir / "log"),
        "RABBITMQ_PID_FILE": str(pid_file),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(state_dir / "enabled_plugins"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    ctl = ("env", f"HOME={state_dir}", _CTL, "-n", node)
    log.info("lab_broker_starting", node=node, state_dir=str(state_dir))
    _run([_SERVER, "-detached"], env=env)
    _run([*ctl, "wait", "--timeout", str(_START_TIMEOUT_SECONDS), str(pid_file)], env=env)
    log.info("lab_broker_started", node=node)


def _run(command: list[str], *, env: dict[str, str]) -> None:
    run_checked(command, env=env, timeout_seconds=_START_TIMEOUT_SECONDS + 10)


def _read_node_file(state_dir: Path) -> LabBroker | None:
    try:
        saved = json.loads((state_dir / _NODE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return LabBroker(
        url=saved["url"], rabbitmqctl=tuple(saved["rabbitmqctl"]), private=True, tls_url=saved.get("tls_url")
    )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _guest_url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/%2F"


def _port_of(broker: LabBroker) -> int:
    return int(broker.url.rsplit(":", 1)[1].split("/", 1)[0])
