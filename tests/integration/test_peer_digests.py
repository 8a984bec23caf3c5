"""Verifying a copy by asking the destination's own daemon, over a real broker, on real libvirt hosts: the
daemon digests its own file, a copy changed after it was written fails, and with no daemon (or a question
it cannot answer) the mover reads the copy back through libvirt instead."""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import libvirt
import pika
import pytest
from structlog.testing import capture_logs

from evacuator.errors import MigrationError
from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.lab.hosts import LabHost
from evacuator.lab.peer import digest_peer
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.steps import MoveStep
from evacuator.peers.messages import DigestRequest
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import PeerClient
from evacuator.transfer.chunks import DataChunk, HoleChunk
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM, block_digest_of_chunks
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import BrokerJanitor, lab_trust

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _client(broker_settings: BrokerSettings, *, timeout_base_seconds: float = 30.0) -> PeerClient:
    return PeerClient(
        blocking_connection_factory(broker_settings, connection_name="test-digests"),
        trust=lab_trust(broker_settings), exchange=broker_settings.peers_exchange,
        timeout_base_seconds=timeout_base_seconds, min_bytes_per_second=10 * MIB,
    )


def _daemon(host: LabHost, broker_settings: BrokerSettings) -> AbstractContextManager[DigestResponder]:
    return digest_peer(host, broker_url=broker_settings.url.get_secret_value(),
                       exchange=broker_settings.peers_exchange)


def _peered(host: LabHost, client: PeerClient) -> LibvirtHost:
    return open_libvirt_host(host.name, host.uri, host.pool, peer_digests=client)


def _migrator(source: LibvirtHost, destination: LibvirtHost) -> ColdMigrator:
    return ColdMigrator(
        source=source, destination=destination, clock=lambda: datetime.now(UTC), shutdown_timeout_seconds=0.5,
        sleep=time.sleep, on_step=lambda _event: None, poll_interval_seconds=0.1,
    )


def _vm(host: LabHost, name: str, mac: str) -> tuple[str, bytes]:
    data = random.Random(name).randbytes(5 * MIB + 77)
    uuid = create_vm(host.uri, host.pool, name=name, tenant="acme", window_seconds=60, disk_bytes=64 * MIB,
                     data=data, mac=mac, start=False)
    return uuid, data


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [event for event in logs if event["event"] == name]


def test_the_destinations_daemon_digests_the_copy_and_nothing_is_read_back(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    host_a, host_b = clean_lab_hosts
    uuid, data = _vm(host_a, "peered", "52:54:00:aa:00:41")
    volume = volume_name("peered")
    expected = sha256_of_volume(host_a.uri, host_a.pool, volume)

    with _daemon(host_b, broker_settings) as daemon_b, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as source, \
            _peered(host_b, _client(broker_settings)) as destination, \
            capture_logs() as logs:  # fmt: skip
        report = _migrator(source, destination).move(uuid)
        answered = daemon_b.answered

    assert report.bytes_copied >= len(data)
    assert answered == 1
    received = _events(logs, "peer_digest_received")
    assert [(e["host"], e["volume"]) for e in received] == [("host-b", volume)]
    assert not _events(logs, "peer_digest_unavailable")
    assert sha256_of_volume(host_b.uri, host_b.pool, volume) == expected
    # The daemon made the copy durable before vouching for it: the source is removed right after.
    assert flushed == [str(host_b.pool_path / volume), str(host_b.pool_path)]


def test_a_copy_changed_after_it_was_written_fails_its_daemons_digest(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
) -> None:
    host_a, host_b = clean_lab_hosts
    uuid, _data = _vm(host_a, "tampered", "52:54:00:aa:00:42")
    volume = volume_name("tampered")
    with _daemon(host_b, broker_settings) as daemon_b, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as source, \
            _peered(host_b, _client(broker_settings)) as destination, capture_logs() as logs:  # fmt: skip
        migrator = _migrator(source, destination)
        migrator.move(uuid, steps=(MoveStep.QUIESCE, MoveStep.COPY_DISKS))
        # One byte flipped in a hole of the copy: what the destination stores is no longer what was sent.
        with (host_b.pool_path / volume).open("r+b") as copy:
            copy.seek(40 * MIB)
            copy.write(b"\x01")
        with pytest.raises(MigrationError, match="differs after copy"):
            migrator.move(uuid, steps=(MoveStep.VERIFY_DISKS,))
        # The daemon's own digest caught it (no read-back through libvirt happened).
        assert daemon_b.answered == 1 and len(_events(logs, "peer_digest_received")) == 1
        assert destination.find_vm(uuid) is None  # nothing was defined on an unverified copy
        assert source.find_volume(host_a.pool, volume) is not None


def test_with_no_daemon_listening_the_copy_is_read_back_through_libvirt_at_once(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
) -> None:
    host_a, host_b = clean_lab_hosts
    uuid, _data = _vm(host_a, "unpeered", "52:54:00:aa:00:43")
    volume = volume_name("unpeered")
    expected = sha256_of_volume(host_a.uri, host_a.pool, volume)
    # A long wait allowed: the test shows the mover does not use it when nobody listens.
    client = _client(broker_settings, timeout_base_seconds=600.0)
    with open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as source, \
            _peered(host_b, client) as destination, \
            capture_logs() as logs:  # fmt: skip
        report = _migrator(source, destination).move(uuid)

    verify = next(step for step in report.steps if step.step is MoveStep.VERIFY_DISKS)
    assert not verify.skipped and verify.seconds < 30
    unavailable = _events(logs, "peer_digest_unavailable")
    assert len(unavailable) == 1 and "listens" in str(unavailable[0]["reason"])
    assert sha256_of_volume(host_b.uri, host_b.pool, volume) == expected


def test_the_daemon_answers_only_for_its_own_pool_and_host_and_a_known_algorithm(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
) -> None:
    _host_a, host_b = clean_lab_hosts
    # A copy awaiting its verification: a volume that no VM defined on host-b names yet.
    uuid, _data = _vm(host_b, "resident", "52:54:00:aa:00:44")
    _undefine_keeping_disks(host_b, uuid)
    _vm(host_b, "stopped", "52:54:00:aa:00:47")  # a tenant's VM, shut off: its disk is nobody's copy
    volume = volume_name("resident")
    client = _client(broker_settings)
    with _daemon(host_b, broker_settings) as daemon_b, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool) as remote, \
            capture_logs() as logs:  # fmt: skip
        streamed = list(remote.read_volume(host_b.pool, volume))
        good = client.digest(host="host-b", pool=host_b.pool, volume=volume, allocation_bytes=8 * MIB)
        other_pool = client.digest(host="host-b", pool="default", volume=volume, allocation_bytes=0)
        missing = client.digest(host="host-b", pool=host_b.pool, volume="no-such.img", allocation_bytes=0)
        tenants = client.digest(host="host-b", pool=host_b.pool, volume=volume_name("stopped"),
                                allocation_bytes=0)  # fmt: skip
        answered = daemon_b.answered

    assert good == block_digest_of_chunks(streamed)
    assert any(isinstance(c, HoleChunk) for c in streamed) and any(isinstance(c, DataChunk) for c in streamed)
    assert other_pool is None and missing is None and tenants is None
    assert answered == 4
    reasons = [str(e["reason"]) for e in _events(logs, "peer_digest_unavailable")]
    assert len(reasons) == 3 and "not the evacuator's pool" in reasons[0] and "no-such.img" in reasons[1]
    assert "is a defined VM's disk" in reasons[2]


def _undefine_keeping_disks(host: LabHost, uuid: str) -> None:
    connection = libvirt.open(host.uri)
    try:
        connection.lookupByUUIDString(uuid).undefine()
    finally:
        connection.close()


def test_the_daemon_will_not_read_a_running_vms_disk_for_anyone(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
) -> None:
    _host_a, host_b = clean_lab_hosts
    create_vm(host_b.uri, host_b.pool, name="busy", tenant="acme", window_seconds=60, disk_bytes=8 * MIB,
              data=b"live data", mac="52:54:00:aa:00:45", start=True)
    with _daemon(host_b, broker_settings) as daemon_b, capture_logs() as logs:
        digest = _client(broker_settings).digest(host="host-b", pool=host_b.pool, volume=volume_name("busy"),
                                                 allocation_bytes=MIB)
        answered = daemon_b.answered
    assert digest is None and answered == 1
    [refusal] = _events(logs, "peer_digest_unavailable")
    assert "belongs to a running VM" in str(refusal["reason"])


def test_requests_that_could_misuse_the_daemon_are_dropped_unanswered(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings, broker_janitor: BrokerJanitor,
) -> None:
    # A publisher on the peers exchange asks for replies into someone else's queue, or with no expiry: the
    # daemon must neither write there nor spend a disk read on it.
    _host_a, host_b = clean_lab_hosts
    _vm(host_b, "victim", "52:54:00:aa:00:46")
    victim_queue = broker_janitor.queue(f"victim-{secrets.token_hex(3)}.notices")
    request = DigestRequest(host="host-b", pool=host_b.pool, volume=volume_name("victim"),
                            algorithm=BLOCK_DIGEST_ALGORITHM).model_dump_json()
    with _daemon(host_b, broker_settings) as daemon_b, \
            pika.BlockingConnection(pika.URLParameters(broker_settings.url.get_secret_value())) as conn, \
            capture_logs() as logs:  # fmt: skip
        channel = conn.channel()
        channel.queue_declare(queue=victim_queue)
        for reply_to, expiration in ((victim_queue, "60000"), ("amq.gen-made-up", None)):
            channel.basic_publish(
                exchange=broker_settings.peers_exchange, routing_key="digest.host-b", body=request,
                properties=pika.BasicProperties(reply_to=reply_to, expiration=expiration))
        deadline = time.monotonic() + 10
        while len(_events(logs, "digest_request_refused")) < 2 and time.monotonic() < deadline:
            conn.sleep(0.1)
        waiting = channel.queue_declare(queue=victim_queue, passive=True).method.message_count
        answered = daemon_b.answered
    assert len(_events(logs, "digest_request_refused")) == 2
    assert answered == 0 and waiting == 0


def test_a_daemon_that_goes_away_mid_request_is_not_waited_for(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
) -> None:
    _host_a, host_b = clean_lab_hosts
    stuck = threading.Event()

    def never_done(_pool: str, _volume: str, _requester: str) -> str | None:
        stuck.wait(60)  # a disk that hangs
        return None

    responder = DigestResponder(blocking_connection_factory(broker_settings, connection_name="doomed"),
                                trust=lab_trust(broker_settings), host="host-b",
                                exchange=broker_settings.peers_exchange, digest_volume=never_done)
    responder.start()
    outcome: list[str | None] = []
    began = time.monotonic()
    client = _client(broker_settings, timeout_base_seconds=600)
    asking = threading.Thread(target=lambda: outcome.append(
        client.digest(host="host-b", pool=host_b.pool, volume="any.img", allocation_bytes=0)))
    with capture_logs() as logs:
        asking.start()
        time.sleep(1.0)
        responder.close()  # its connection, exclusive queue and the request it took go with it
        asking.join(30)
    stuck.set()
    assert outcome == [None] and time.monotonic() - began < 15  # not the 600 s it was allowed
    [gone] = _events(logs, "peer_digest_unavailable")
    assert "went away" in str(gone["reason"])


def test_a_daemon_still_digesting_a_big_disk_is_waited_for(broker_settings: BrokerSettings) -> None:
    # The asker checks every 5 s that the daemon is still there (its queue is exclusive to the daemon's
    # connection, which the broker only lets others see as "locked"): a slow digest must not look like a
    # daemon that went away. No libvirt here: the digester stands for a big disk being read.

    def slow(_pool: str, _volume: str, _requester: str) -> str | None:
        time.sleep(7)
        return "ab" * 32

    responder = DigestResponder(blocking_connection_factory(broker_settings, connection_name="slow"),
                                trust=lab_trust(broker_settings), host="host-b",
                                exchange=broker_settings.peers_exchange, digest_volume=slow)
    responder.start()
    try:
        with capture_logs() as logs:
            digest = _client(broker_settings).digest(host="host-b", pool="evacuator", volume="big.img",
                                                     allocation_bytes=0)
    finally:
        responder.close()
    assert digest == "ab" * 32
    assert not _events(logs, "peer_digest_unavailable")
