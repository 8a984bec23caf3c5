"""The security tests' cloud: provisioned hosts, each its own broker user, and how tests act as them."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pika.exceptions
import yaml
from pydantic import SecretStr

from evacuator.cli import main
from evacuator.lab.broker import LabBroker
from evacuator.peers.host_users import host_user
from evacuator.peers.messages import PeerTrust
from notifiers.connection import ConnectionFactory, blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import _with_credentials


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    name: str
    user: str
    settings: BrokerSettings  # as this host's own user; peers_vhost set

    def connect(self, label: str) -> ConnectionFactory:
        return blocking_connection_factory(self.settings, connection_name=f"{self.name}-{label}",
                                           vhost=self.settings.peers_virtual_host)  # fmt: skip

    def tenants_connection(self) -> Any:
        return blocking_connection_factory(self.settings, connection_name=f"{self.name}-tenants")()


@dataclass(frozen=True, slots=True, kw_only=True)
class Cloud:
    """Three provisioned hosts: a and b are honest, mallory's daemon is compromised."""

    a: Host
    b: Host
    mallory: Host
    peers_vhost: str
    admin_url: str  # guest: every permission, as every host's daemon was before

    def trust(self, own: Host, *peers: Host) -> PeerTrust:
        return PeerTrust(own_user=own.user, peer_users={peer.name: peer.user for peer in peers})

    def admin_peers_url(self) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + quote(self.peers_vhost, safe="")))


def write_config(path: Path, settings: BrokerSettings, url: str, peers_vhost: str) -> Path:
    path.write_text(yaml.safe_dump({
        "host": {"name": "hv1"},
        "peers": [{"name": "hv2", "libvirt_uri": "qemu+tcp://hv2/system"}],
        "data_channel": {"enabled": False},
        "broker": {"url": url, "notices_exchange": settings.notices_exchange,
                   "replies_exchange": settings.replies_exchange, "peers_exchange": settings.peers_exchange,
                   "peers_vhost": peers_vhost},
    }))  # fmt: skip
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class Provisioned:
    peers_vhost: str
    hosts: dict[str, Host]  # by role


@contextmanager
def provisioned_hosts(
    lab_broker: LabBroker, broker_settings: BrokerSettings, directory: Path, *, roles: Sequence[str],
    label: str,
) -> Iterator[Provisioned]:
    """A host per role (named `<role>-<token>`), each its own broker user made by `evacuator host add` for
    real, in a peers vhost of its own (`evacuator-test-<token>-<label>`); all removed afterwards."""
    token = secrets.token_hex(3)
    peers_vhost = f"evacuator-test-{token}-{label}"
    config = write_config(directory / "evacuator.yaml", broker_settings, lab_broker.url, peers_vhost)
    ctl = " ".join(lab_broker.rabbitmqctl)
    hosts: dict[str, Host] = {}
    try:
        for role in roles:
            name = f"{role}-{token}"
            password = secrets.token_urlsafe(12)
            (directory / name).write_text(password + "\n")
            assert main(["host", "add", name, "--password-file", str(directory / name), "--config",
                         str(config), "--rabbitmqctl", ctl]) == 0  # fmt: skip
            settings = broker_settings.model_copy(update={
                "url": SecretStr(_with_credentials(lab_broker.url, host_user(name), password)),
                "peers_vhost": peers_vhost,
            })  # fmt: skip
            hosts[role] = Host(name=name, user=host_user(name), settings=settings)
        yield Provisioned(peers_vhost=peers_vhost, hosts=hosts)
    finally:
        for host in hosts.values():
            main(["host", "remove", host.name, "--config", str(config), "--rabbitmqctl", ctl])
        subprocess.run([*lab_broker.rabbitmqctl, "--quiet", "delete_vhost", peers_vhost], capture_output=True,
                       timeout=60, check=False)  # fmt: skip


def refused(connect: Callable[[], Any], action: Callable[[Any], object]) -> int | None:
    """The AMQP code with which the broker closes the channel on `action`; None if it let it through."""
    connection = connect()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        try:
            action(channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return int(exc.reply_code)
        return None
    finally:
        if connection.is_open:
            connection.close()
