"""Reading a volume on real libvirt: from the local file when this process sees libvirt's file, else
through a libvirt download; the bytes are the same either way, and a copy written in runs is exact."""

from __future__ import annotations

import hashlib
import random

import pytest
from structlog.testing import capture_logs

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.lab.hosts import LabHost, LabHosts
from evacuator.lab.vms import create_vm, volume_name
from evacuator.transfer.chunks import DataChunk, HoleChunk
from evacuator.transfer.digests import block_digest_of_chunks, sha256_of_chunks

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_this_hosts_volume_is_read_from_its_file_and_matches_the_download(
    clean_lab_hosts: tuple[LabHost, ...],
) -> None:
    host_a, host_b = clean_lab_hosts
    data = random.Random(3).randbytes(3 * MIB + 123)
    create_vm(host_a.uri, host_a.pool, name="reader", tenant="acme", window_seconds=60,
              disk_bytes=32 * MIB, data=data, mac="52:54:00:aa:00:31", start=False)
    volume = volume_name("reader")
    expected = hashlib.sha256(data + bytes(32 * MIB - len(data))).hexdigest()

    with capture_logs() as logs, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as local, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool) as remote:  # fmt: skip
        local_chunks = list(local.read_volume(host_a.pool, volume))
        streamed_chunks = list(remote.read_volume(host_a.pool, volume))
        local_digest = local.local_digest(host_a.pool, volume)

    assert not [event for event in logs if event["event"] == "volume_read_streamed"]
    assert sha256_of_chunks(local_chunks) == sha256_of_chunks(streamed_chunks) == expected
    assert block_digest_of_chunks(local_chunks) == block_digest_of_chunks(streamed_chunks) == local_digest
    # Only the written extents were read from the file; the rest came as holes.
    assert sum(len(c.data) for c in local_chunks if isinstance(c, DataChunk)) < 8 * MIB
    assert sum(c.length_bytes for c in local_chunks if isinstance(c, HoleChunk)) > 24 * MIB

    # Written back in runs onto a fresh volume of another host, the copy is exact.
    with open_libvirt_host("host-b", host_b.uri, host_b.pool) as destination:
        destination.create_volume(host_b.pool, volume, capacity_bytes=32 * MIB)
        sent = destination.write_volume(host_b.pool, volume, iter(local_chunks))
        copy = destination.find_volume(host_b.pool, volume)
        copied = sha256_of_chunks(destination.read_volume(host_b.pool, volume))
    assert copied == expected and len(data) <= sent < 8 * MIB
    assert copy is not None and copy.allocation_bytes < 8 * MIB  # the holes stayed holes


def test_a_volume_this_process_cannot_see_is_read_through_libvirt(clean_fault_lab: LabHosts) -> None:
    # host-b's pool is a tmpfs mounted in host-b's own mount namespace: the path libvirt names shows
    # something else (nothing) from here, which the identity check must notice.
    host_b = next(host for host in clean_fault_lab.hosts if host.name == "host-b")
    data = random.Random(4).randbytes(256 * 1024)
    create_vm(host_b.uri, host_b.pool, name="hidden", tenant="acme", window_seconds=60,
              disk_bytes=2 * MIB, data=data, mac="52:54:00:aa:00:32", start=False)

    with capture_logs() as logs, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool, local_files=True) as host:  # fmt: skip
        content = sha256_of_chunks(host.read_volume(host_b.pool, volume_name("hidden")))
        # Its digest, too, comes through libvirt: the local file this process would read is not libvirt's.
        local_digest = host.local_digest(host_b.pool, volume_name("hidden"))
        digest = host.volume_digest(host_b.pool, volume_name("hidden"))

    assert content == hashlib.sha256(data + bytes(2 * MIB - len(data))).hexdigest()
    assert local_digest is None
    assert digest == block_digest_of_chunks([DataChunk(data=data + bytes(2 * MIB - len(data)))])
    streamed = [event["volume"] for event in logs if event["event"] == "volume_read_streamed"]
    # read, local_digest, and volume_digest's try; its fallback streams without looking a second time
    assert streamed == ["hidden.raw"] * 3
