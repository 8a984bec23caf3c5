"""The host view on the real broker and real lab libvirt hosts: the room read from libvirt, and three
daemons' publishers and subscribers, each its own provisioned host user, hearing each other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.libvirt.room import LibvirtRoomReader
from evacuator.hypervisor.room import RoomCaps
from evacuator.lab.broker import LabBroker
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import MEMORY_MIB, create_vm
from evacuator.peers.host_users import host_user
from evacuator.peers.messages import PeerTrust
from evacuator.peers.state_publisher import HostStatus, Switches
from evacuator.placement.model import Verdict
from evacuator.settings import HostViewSettings
from evacuator.wiring.host_view import HostViewParts, build_host_view
from notifiers.settings import BrokerSettings
from tests.security.cloud import provisioned_hosts

pytestmark = pytest.mark.integration

MIB = 1 << 20
INTERVAL = 0.5
STALE_AFTER = 1.5
CAPPED_MEMORY = 256 * MIB


def now() -> datetime:
    return datetime.now(UTC)


def test_the_room_is_read_from_libvirt_capped_and_with_the_running_vms_functions(
    clean_lab_hosts: tuple[LabHost, ...],
) -> None:
    host_a, host_b = clean_lab_hosts
    create_vm(host_a.uri, host_a.pool, name="db-1", tenant="acme", window_seconds=None, disk_bytes=MIB,
              data=b"x", mac="52:54:00:00:19:01", facts=VmFacts(tenant="acme", function="db"))  # fmt: skip
    create_vm(host_a.uri, host_a.pool, name="off", tenant="acme", window_seconds=None, disk_bytes=MIB,
              data=b"x", mac="52:54:00:00:19:02", start=False)  # fmt: skip
    capped = LibvirtRoomReader(name=host_a.name, uri=host_a.uri, pool=host_a.pool,
                               caps=RoomCaps(guest_memory_bytes=CAPPED_MEMORY, guest_vcpus=4))
    free = LibvirtRoomReader(name=host_b.name, uri=host_b.uri, pool=host_b.pool, caps=RoomCaps())
    try:
        room = capped.read_room()
        # Only the running VM counts; the lab hosts share one machine, so no absolute capacity is asserted.
        assert (room.running_vms, room.functions) == (1, frozenset({("acme", "db")}))
        assert (room.memory_capacity_bytes, room.memory_free_bytes) == (CAPPED_MEMORY,
                                                                         CAPPED_MEMORY - MEMORY_MIB * MIB)
        assert (room.vcpus_capacity, room.vcpus_free) == (4, 3)
        assert 0 < room.pool_available_bytes <= room.pool_capacity_bytes
        empty = free.read_room()
        assert (empty.running_vms, empty.functions) == (0, frozenset())
        assert empty.memory_free_bytes == empty.memory_capacity_bytes > 0
        assert empty.vcpus_free == empty.vcpus_capacity > 0
    finally:
        capped.close()
        free.close()


@pytest.fixture(scope="module")
def three_hosts(
    lab_broker: LabBroker, broker_settings: BrokerSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, BrokerSettings]]:
    """Three hosts, each its own user made by `evacuator host add`, in a peers vhost of the module's own."""
    with provisioned_hosts(lab_broker, broker_settings, tmp_path_factory.mktemp("view-hosts"),
                           roles=("viewa", "viewb", "viewc"), label="view") as made:  # fmt: skip
        yield {host.name: host.settings for host in made.hosts.values()}


def test_three_hosts_hear_each_other_and_a_silent_one_goes_stale(
    three_hosts: dict[str, BrokerSettings], clean_lab_hosts: tuple[LabHost, ...]
) -> None:
    host_a, host_b = clean_lab_hosts
    a, b, c = sorted(three_hosts)
    libvirt_of = {a: (host_a, None), b: (host_b, CAPPED_MEMORY), c: (host_a, None)}
    readers = {name: LibvirtRoomReader(name=lab.name, uri=lab.uri, pool=lab.pool,
                                       caps=RoomCaps(guest_memory_bytes=cap))
               for name, (lab, cap) in libvirt_of.items()}  # fmt: skip
    agents: dict[str, HostViewParts] = {
        name: build_host_view(
            host=name, broker=settings, trust=PeerTrust(own_user=host_user(name), peer_users={
                other: host_user(other) for other in three_hosts if other != name}),
            room=readers[name], view_settings=HostViewSettings(interval_seconds=INTERVAL,
                                                               stale_after_seconds=STALE_AFTER),
            switches=Switches(), clock=now,
        ) for name, settings in three_hosts.items()
    }  # fmt: skip
    started = time.monotonic()
    try:
        for agent in agents.values():
            agent.start()
        for name, agent in agents.items():
            assert agent.view.wait_for(three_hosts, INTERVAL + 1.0), f"{name} heard {agent.view.heard()}"
        assert time.monotonic() - started < 3 * INTERVAL + 2.0
        seen_by_a = {state.name: state for state in agents[a].view.hosts(now())}
        assert seen_by_a[b].capacity.memory_bytes == CAPPED_MEMORY
        assert seen_by_a[b].verdict is Verdict.UNKNOWN  # no verdict yet: never a destination

        # A change is published at once, not at the next interval.
        agents[b].publisher.set_status(HostStatus(verdict=Verdict.MODERATE, reasons=("cpu hot",),
                                                  quarantined=True))  # fmt: skip
        deadline = time.monotonic() + INTERVAL
        while not _quarantined(agents[a], b) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _quarantined(agents[a], b)

        agents[c].publisher.close()
        time.sleep(STALE_AFTER + INTERVAL)
        for name in (a, b):
            seen = {state.name: state.verdict for state in agents[name].view.hosts(now())}
            assert seen[c] is Verdict.UNKNOWN, f"{name} still believes {c}: {seen}"
        assert {s.name for s in agents[a].view.hosts(now()) if s.fresh(now(), STALE_AFTER)} == {a, b}
        assert _quarantined(agents[a], b)  # still published, every interval
    finally:
        for agent in agents.values():
            agent.close()
        for reader in readers.values():
            reader.close()


def _quarantined(agent: HostViewParts, host: str) -> bool:
    return any(state.name == host and state.quarantined for state in agent.view.hosts(now()))
