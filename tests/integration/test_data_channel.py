"""Copies through the destination's own daemon, over a real broker and real libvirt hosts: byte for byte with
and without TLS, libvirt's upload when the daemon has no channel or is absent, and a daemon killed mid-copy
failing the copy, which a retry then finishes with the VM defined once and no volume orphaned."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from evacuator.errors import MigrationError
from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.lab.hosts import LabHost, pool_volumes
from evacuator.lab.peer import host_daemon
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.steps import MoveStep
from evacuator.peers.rpc import PeerClient
from evacuator.transfer.chunks import Chunk
from evacuator.transfer.sender import DataChannelClient
from evacuator.transfer.wire import Encryption
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import lab_trust
from tests.fixtures.chunk_faults import acting_after_first_mib

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _sender(broker_settings: BrokerSettings, *, encryption: Encryption = "auto",
            ) -> tuple[PeerClient, DataChannelClient]:
    client = PeerClient(
        blocking_connection_factory(broker_settings, connection_name="test-data-channel"),
        trust=lab_trust(broker_settings), exchange=broker_settings.peers_exchange, timeout_base_seconds=30,
        min_bytes_per_second=10 * MIB)
    return client, DataChannelClient(client, encryption=encryption, stall_timeout_seconds=5.0)


@contextmanager
def _hosts(host_a: LabHost, host_b: LabHost, broker_settings: BrokerSettings, *,
           encryption: Encryption = "tls") -> Iterator[tuple[LibvirtHost, LibvirtHost]]:
    """host-a as the mover's own host, host-b as its peer: digests and copies through host-b's daemon."""
    digests, sender = _sender(broker_settings, encryption=encryption)
    with open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as a, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool, peer_digests=digests,
                              volume_sender=sender) as b:  # fmt: skip
        yield a, b


def _migrator(source: LibvirtHost, destination: LibvirtHost) -> ColdMigrator:
    return ColdMigrator(source=source, destination=destination, clock=lambda: datetime.now(UTC),
                        shutdown_timeout_seconds=0.3, sleep=time.sleep, on_step=lambda _event: None,
                        poll_interval_seconds=0.1)


def _vm(host: LabHost, name: str, mac: str) -> str:
    data = random.Random(name).randbytes(6 * MIB + 513)
    return create_vm(host.uri, host.pool, name=name, tenant="acme", window_seconds=60, disk_bytes=64 * MIB,
                     data=data, mac=mac, start=False)


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [event for event in logs if event["event"] == name]


def _url(broker_settings: BrokerSettings) -> str:
    return broker_settings.url.get_secret_value()


@pytest.mark.parametrize("encryption", ["tls", "none"])
def test_a_cold_move_copies_through_the_destinations_daemon_byte_for_byte(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings, encryption: Encryption,
) -> None:
    host_a, host_b = clean_lab_hosts
    uuid = _vm(host_a, "channeled", "52:54:00:aa:00:61")
    volume = volume_name("channeled")
    expected = sha256_of_volume(host_a.uri, host_a.pool, volume)

    with host_daemon(host_b, broker_url=_url(broker_settings), exchange=broker_settings.peers_exchange,
                     data_channel=encryption) as daemon, \
            _hosts(host_a, host_b, broker_settings, encryption=encryption) as (a, b), \
            capture_logs() as logs:  # fmt: skip
        report = _migrator(a, b).move(uuid)
        assert daemon.receiver is not None
        received, answered = daemon.receiver.received, daemon.digests.answered
        assert a.find_vm(uuid) is None and b.find_vm(uuid) is not None

    assert received == 1 and answered == 1  # written and then vouched for by host-b's daemon
    sent = _events(logs, "data_channel_sent")
    assert [(e["volume"], e["tls"]) for e in sent] == [(volume, encryption == "tls")]
    assert not _events(logs, "data_channel_unavailable")
    # Only the data's blocks travelled, not the disk's 58 MiB of holes.
    assert 6 * MIB + 513 <= report.bytes_copied <= 6 * MIB + 4096
    assert sha256_of_volume(host_b.uri, host_b.pool, volume) == expected
    assert pool_volumes(host_a) == [] and pool_volumes(host_b) == [volume]


@pytest.mark.parametrize(("daemon_runs", "reason"), [
    (True, "this daemon runs no data channel"),
    (False, "no daemon of host-b listens"),
])
def test_without_the_destinations_channel_libvirt_uploads_the_copy(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings, daemon_runs: bool, reason: str,
) -> None:
    host_a, host_b = clean_lab_hosts
    uuid = _vm(host_a, "uploaded", "52:54:00:aa:00:62")
    volume = volume_name("uploaded")
    expected = sha256_of_volume(host_a.uri, host_a.pool, volume)
    daemon = host_daemon(host_b, broker_url=_url(broker_settings), exchange=broker_settings.peers_exchange,
                         data_channel=None) if daemon_runs else None

    with daemon if daemon is not None else _nothing(), _hosts(host_a, host_b, broker_settings) as (a, b), \
            capture_logs() as logs:  # fmt: skip
        report = _migrator(a, b).move(uuid)
    copy_seconds = next(t.seconds for t in report.steps if t.step is MoveStep.COPY_DISKS)

    unavailable = _events(logs, "data_channel_unavailable")
    assert [e["reason"] for e in unavailable] == [reason]
    assert not _events(logs, "data_channel_sent")
    assert copy_seconds < 5  # no wait for a ticket that cannot come: the broker said so at once
    assert sha256_of_volume(host_b.uri, host_b.pool, volume) == expected


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class KillsItsDaemonMidCopy:
    """host-b as the mover sees it, except that its daemon process is killed (SIGKILL) once the first MiB of
    a disk has gone into the data channel."""

    def __init__(self, host: LibvirtHost, daemon: subprocess.Popen[str]) -> None:
        self._host, self._daemon = host, daemon

    def __getattr__(self, name: str) -> object:
        return getattr(self._host, name)

    def write_volume(self, pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        def kill() -> None:
            os.kill(self._daemon.pid, signal.SIGKILL)
            self._daemon.wait(10)

        return self._host.write_volume(pool, volume, acting_after_first_mib(chunks, kill))


@contextmanager
def _daemon_process(host: LabHost, broker_settings: BrokerSettings) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-m", "evacuator.lab.peer", "--name", host.name, "--uri", host.uri, "--pool",
         host.pool, "--broker-url", _url(broker_settings), "--exchange", broker_settings.peers_exchange,
         "--data-channel", "tls"],
        stdout=subprocess.PIPE, text=True,
    ) as daemon:  # fmt: skip
        assert daemon.stdout is not None and daemon.stdout.readline().strip() == "ready"
        try:
            yield daemon
        finally:
            if daemon.poll() is None:
                daemon.kill()


def test_a_daemon_killed_mid_copy_fails_the_copy_and_a_retry_finishes_the_move(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
) -> None:
    host_a, host_b = clean_lab_hosts
    uuid = _vm(host_a, "interrupted", "52:54:00:aa:00:63")
    volume = volume_name("interrupted")
    expected = sha256_of_volume(host_a.uri, host_a.pool, volume)

    with _daemon_process(host_b, broker_settings) as process, \
            _hosts(host_a, host_b, broker_settings) as (a, b):  # fmt: skip
        with pytest.raises(MigrationError, match="data channel") as failed:
            _migrator(a, KillsItsDaemonMidCopy(b, process)).move(uuid)  # type: ignore[arg-type]
        assert failed.value.step == MoveStep.COPY_DISKS
        assert process.returncode == -signal.SIGKILL
        assert b.find_vm(uuid) is None  # never defined where its disk is not verified

    with host_daemon(host_b, broker_url=_url(broker_settings), exchange=broker_settings.peers_exchange,
                     ) as daemon, _hosts(host_a, host_b, broker_settings) as (a, b):  # fmt: skip
        _migrator(a, b).move(uuid)
        assert daemon.receiver is not None and daemon.receiver.received == 1
        assert a.find_vm(uuid) is None and b.find_vm(uuid) is not None

    assert sha256_of_volume(host_b.uri, host_b.pool, volume) == expected
    assert pool_volumes(host_a) == [] and pool_volumes(host_b) == [volume]
