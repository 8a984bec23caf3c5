"""The security tests' cloud (tests/security/cloud.py): three hosts, each its own broker user provisioned by
`evacuator host add` for real, in a peers vhost of the module's own; removed afterwards."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from evacuator.cli import main
from evacuator.lab.broker import LabBroker
from evacuator.peers.host_users import host_user
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import _with_credentials
from tests.security.cloud import Cloud, Host, write_config


@pytest.fixture(scope="module")
def cloud(
    lab_broker: LabBroker, broker_settings: BrokerSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cloud]:
    token = secrets.token_hex(3)
    peers_vhost = f"evacuator-test-{token}-peers"
    directory = tmp_path_factory.mktemp("hosts")
    config = write_config(directory / "evacuator.yaml", broker_settings, lab_broker.url, peers_vhost)
    ctl = " ".join(lab_broker.rabbitmqctl)
    hosts: dict[str, Host] = {}
    try:
        for role in ("a", "b", "mallory"):
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
        # The controls' unconfined user, as every host's daemon was before (none has rights in a new vhost).
        subprocess.run([*lab_broker.rabbitmqctl, "--quiet", "set_permissions", "-p", peers_vhost,
                        urlsplit(lab_broker.url).username or "guest", ".*", ".*", ".*"],
                       capture_output=True, timeout=60, check=True)  # fmt: skip
        yield Cloud(a=hosts["a"], b=hosts["b"], mallory=hosts["mallory"], peers_vhost=peers_vhost,
                    admin_url=lab_broker.url)  # fmt: skip
    finally:
        for host in hosts.values():
            main(["host", "remove", host.name, "--config", str(config), "--rabbitmqctl", ctl])
        subprocess.run([*lab_broker.rabbitmqctl, "--quiet", "delete_vhost", peers_vhost], capture_output=True,
                       timeout=60, check=False)  # fmt: skip
