"""`evacuator peers` on a real broker: which hosts' digest daemons answer, and the cloud-wide slots held."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from evacuator.cli import main
from evacuator.commands.peers import CloudStatus, HostStatus, read_status
from evacuator.peers.cloud_slots import BrokerCloudCaps, incoming_prefix, slot_queue, total_prefix
from evacuator.peers.messages import PeerTrust
from evacuator.peers.responder import DigestResponder
from evacuator.settings import load_settings
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import BrokerJanitor

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def _user(broker_settings: BrokerSettings) -> str:
    """The lab's daemons all connect as the broker's admin user."""
    return urlsplit(broker_settings.url.get_secret_value()).username or "guest"


@pytest.fixture
def config(tmp_path: Path, broker_settings: BrokerSettings, broker_janitor: BrokerJanitor) -> Iterator[Path]:
    exchange = broker_settings.peers_exchange
    for index in (1, 2):
        broker_janitor.queue(slot_queue(total_prefix(exchange), index))
        for host in ("hv-a", "hv-b", "hv-c"):
            broker_janitor.queue(slot_queue(incoming_prefix(exchange, host), index))
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump({
        "host": {"name": "hv-a", "libvirt_uri": "test:///default", "migration_address": "127.0.0.1"},
        "peers": [{"name": "hv-b", "libvirt_uri": "test:///default", "broker_user": _user(broker_settings)},
                  {"name": "hv-c", "libvirt_uri": "test:///default"}],  # host.hv-c: no daemon of its runs
        "broker": {"url": broker_settings.url.get_secret_value(), "peers_exchange": exchange},
        "evacuation": {"max_total_transfers": 2, "incoming_caps_cloud_wide": True,
                       "max_incoming_moves_per_peer": 2},
        "state_dir": str(tmp_path / "state"),
    }))  # fmt: skip
    yield path


def test_peers_shows_whose_daemon_answers_and_the_slots_held(
    config: Path, broker_settings: BrokerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(config)
    connect = blocking_connection_factory(broker_settings, connection_name="test-peers")
    daemon_b = DigestResponder(connect, trust=PeerTrust.shared(_user(broker_settings), ("hv-a", "hv-c")),
                               host="hv-b", exchange=broker_settings.peers_exchange,
                               digest_volume=lambda _pool, _volume, _requester: None)
    caps = BrokerCloudCaps(connect, prefix=broker_settings.peers_exchange, total=2, incoming_per_host=2)
    daemon_b.start()
    try:
        with caps.hold(destination="hv-c", vm_uuid="vm-1"):
            status = read_status(settings, connect)
            assert main(["peers", "--config", str(config)]) == 0
        after = read_status(settings, connect)
    finally:
        daemon_b.close()

    assert status == CloudStatus(hosts=(
        HostStatus(host="hv-a", digests_answered=False, incoming_slots_held=0, incoming_slots=2),
        HostStatus(host="hv-b", digests_answered=True, incoming_slots_held=0, incoming_slots=2),
        HostStatus(host="hv-c", digests_answered=False, incoming_slots_held=1, incoming_slots=2),
    ), total_slots_held=1, total_slots=2)
    assert after.total_slots_held == 0 and after.hosts[2].incoming_slots_held == 0
    # The responder's own log lines share stdout in tests; the command's report is the rest.
    printed = [line for line in capsys.readouterr().out.splitlines() if not LOG_LINE.match(line)]
    assert printed == [
        "host  digest daemon  incoming transfer slots",
        "hv-a  absent         0/2 held",
        "hv-b  answers        0/2 held",
        "hv-c  absent         1/2 held",
        "cloud-wide transfer slots: 1/2 held",
    ]
