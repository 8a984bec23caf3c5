"""The security tests' cloud (tests/security/cloud.py): three hosts, each its own broker user provisioned by
`evacuator host add` for real, in a peers vhost of the module's own; removed afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from evacuator.lab.broker import LabBroker
from notifiers.settings import BrokerSettings
from tests.security.cloud import Cloud, provisioned_hosts


@pytest.fixture(scope="module")
def cloud(
    lab_broker: LabBroker, broker_settings: BrokerSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cloud]:
    with provisioned_hosts(lab_broker, broker_settings, tmp_path_factory.mktemp("hosts"),
                           roles=("a", "b", "mallory"), label="peers") as made:  # fmt: skip
        # The controls' unconfined user, as every host's daemon was before (none has rights in a new vhost).
        subprocess.run([*lab_broker.rabbitmqctl, "--quiet", "set_permissions", "-p", made.peers_vhost,
                        urlsplit(lab_broker.url).username or "guest", ".*", ".*", ".*"],
                       capture_output=True, timeout=60, check=True)  # fmt: skip
        hosts = made.hosts
        yield Cloud(a=hosts["a"], b=hosts["b"], mallory=hosts["mallory"], peers_vhost=made.peers_vhost,
                    admin_url=lab_broker.url)  # fmt: skip
