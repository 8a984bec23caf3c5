"""The lab's broker users, in a vhost of the lab's: each host's own (`evacuator host add`, as an admin makes
it) and the tenants'."""

from __future__ import annotations

import secrets
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import quote, urlsplit

import structlog

from evacuator.lab.broker import LabBroker
from evacuator.lab.commands import run_checked
from notifiers.provisioning import provision_tenant, remove_tenant

log = structlog.get_logger(__name__)

_CTL_TIMEOUT_SECONDS = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class LabVhost:
    """A virtual host of the lab's own on the broker: deleting it takes every queue and exchange in it."""

    name: str
    broker: LabBroker

    def url(self, user: str) -> str:
        """The broker URL of `user` in this vhost, without a password (the settings name a password file)."""
        parts = urlsplit(self.broker.url)
        where = f"{parts.hostname}:{parts.port}"
        return f"{parts.scheme}://{quote(user, safe='')}@{where}/{quote(self.name, safe='')}"


@contextmanager
def lab_vhost(broker: LabBroker, prefix: str) -> Iterator[LabVhost]:
    """A new vhost `<prefix>-<token>`, deleted when the block ends: the lab's traffic (notices, replies,
    host states, slots) stays apart from anything else on a shared broker and leaves nothing behind."""
    vhost = LabVhost(name=f"{prefix}-{secrets.token_hex(3)}", broker=broker)
    _ctl(broker, ["add_vhost", vhost.name])
    try:
        yield vhost
    finally:
        _ctl(broker, ["delete_vhost", vhost.name])


@dataclass(frozen=True, slots=True, kw_only=True)
class HostUser:
    """A lab host's broker user as `evacuator host add` makes it: from the host's own settings file."""

    name: str
    config: Path
    password_file: Path


@contextmanager
def lab_users(vhost: LabVhost, hosts: Sequence[HostUser], tenants: Mapping[str, str]) -> Iterator[None]:
    """Every host's broker user and every tenant's (name: password) in `vhost`, removed when the block
    ends, even those a failed start made. Each made and removed at once, as each rabbitmqctl call takes
    seconds."""
    broker = vhost.broker
    ctl = broker.rabbitmqctl
    made: list[Callable[[], object]] = [
        *(partial(add_host_user, h.name, config=h.config, password_file=h.password_file, broker=broker)
          for h in hosts),
        *(partial(provision_tenant, name, password, vhost=vhost.name, rabbitmqctl=ctl)
          for name, password in tenants.items()),
    ]  # fmt: skip
    removed: list[Callable[[], object]] = [
        *(partial(remove_host_user, h.name, config=h.config, broker=broker) for h in hosts),
        *(partial(remove_tenant, name, rabbitmqctl=ctl) for name in tenants),
    ]
    try:
        _at_once(made)
        yield
    finally:
        _at_once(removed)


def _at_once(calls: Sequence[Callable[[], object]]) -> None:
    """Runs every call, each on a thread; raises the first error once all have ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls)), thread_name_prefix="lab-users") as pool:
        futures = [pool.submit(call) for call in calls]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        raise errors[0]


def write_password(path: Path) -> Path:
    """A new random password in `path`, readable by its owner only (a daemon's broker.password_file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(24) + "\n", encoding="ascii")
    return path


def add_host_user(name: str, *, config: Path, password_file: Path, broker: LabBroker) -> None:
    """`evacuator host add NAME` with the host's own settings file. A host user left by an earlier lab run
    that did not end is taken over with a new password (--reset-password): the lab owns these names."""
    _evacuator(["host", "add", name, "--password-file", str(password_file), "--config", str(config),
                "--rabbitmqctl", shlex.join(broker.rabbitmqctl), "--reset-password"])  # fmt: skip


def remove_host_user(name: str, *, config: Path, broker: LabBroker) -> None:
    """`evacuator host remove NAME`: the user and its permissions (its queues go with the lab's vhost)."""
    _evacuator(["host", "remove", name, "--config", str(config), "--rabbitmqctl",
                shlex.join(broker.rabbitmqctl)])  # fmt: skip


def _evacuator(arguments: Sequence[str]) -> None:
    # The CLI as an admin runs it, in a process of its own: this process's logging stays as it is.
    run_checked([sys.executable, "-m", "evacuator.cli", *arguments], timeout_seconds=_CTL_TIMEOUT_SECONDS,
                shown=f"evacuator {' '.join(arguments[:3])}")  # fmt: skip
    # Not its output: `host add` prints a password when it makes one up (it does not here, but never log it).
    log.info("lab_host_user", action=arguments[1], host=arguments[2])


def _ctl(broker: LabBroker, arguments: list[str]) -> None:
    run_checked([*broker.rabbitmqctl, "--quiet", *arguments], timeout_seconds=_CTL_TIMEOUT_SECONDS,
                shown=f"rabbitmqctl {' '.join(arguments)}")  # fmt: skip
    log.info("lab_vhost", action=arguments[0], vhost=arguments[1])
