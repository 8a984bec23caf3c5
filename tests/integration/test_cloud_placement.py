"""VMs go only where they fit, on real libvirt and the real broker: three lab hosts, host-a sick, host-b's
advertised memory too small for its VMs, host-c healthy; host-b and host-c publish their state and answer
claims as their daemons do: every VM lands on host-c, none on host-b, and every claim is given back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.libvirt.room import LibvirtRoomReader
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.hypervisor.room import RoomCaps
from evacuator.incident.planner import PlannedMove
from evacuator.lab.hosts import LabHosts, pool_volumes
from evacuator.lab.vms import MEMORY_MIB, create_vm
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.cloud_destinations import CloudConfig, CloudDestinations
from evacuator.moves.journal import Journal
from evacuator.peers.claim_desk import ClaimDesk, free_above_reserve
from evacuator.peers.rpc import PeerClient
from evacuator.peers.state_publisher import HostStatus, Switches
from evacuator.placement.model import PlacementPolicy, Verdict
from evacuator.settings import DataChannelSettings, HostSettings, HostViewSettings
from evacuator.wiring.host_view import HostViewParts, build_host_view
from evacuator.wiring.moves import assemble_engine
from evacuator.wiring.peers import build_peer_services
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.outcomes import RecordedOutcomes
from tests.fixtures.broker import lab_trust

pytestmark = pytest.mark.integration

MIB = 1 << 20
HOSTS = ("host-a", "host-b", "host-c")
POLICY = PlacementPolicy(stale_after_seconds=3.0, reserve_fraction=0.05, preferred=("host-b", "host-c"))
# host-b offers its guests less than one lab VM's memory; host-c room for several (vCPUs too: the lab machine
# has few, shared by the three hosts).
CAPS = {"host-a": RoomCaps(), "host-b": RoomCaps(guest_memory_bytes=MEMORY_MIB * MIB // 2),
        "host-c": RoomCaps(guest_memory_bytes=16 * MEMORY_MIB * MIB, guest_vcpus=16)}


def utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def host_daemon(lab: LabHosts, name: str,
                broker: BrokerSettings) -> Iterator[tuple[HostViewParts, ClaimDesk]]:  # fmt: skip
    """`name`'s daemon as its peers see it: its state on the peers exchange, claims on its room answered."""
    host = {h.name: h for h in lab.hosts}[name]
    room = LibvirtRoomReader(name=name, uri=host.uri, pool=host.pool, caps=CAPS[name])
    trust = lab_trust(broker, HOSTS)
    desk = ClaimDesk(host=name, free_room=free_above_reserve(room, POLICY))
    services = build_peer_services(
        host=HostSettings(name=name, libvirt_uri=host.uri, storage_pool=host.pool), broker=broker,
        trust=trust,
        channel=DataChannelSettings(enabled=False), channel_addresses=None, min_bytes_per_second=MIB,
        connection_name=f"test-cloud-{name}", claims=desk,
    )  # fmt: skip
    view = build_host_view(host=name, broker=broker, trust=trust, room=room,
                           view_settings=HostViewSettings(interval_seconds=1.0), switches=Switches(),
                           clock=utc_now)  # fmt: skip
    services.start()
    view.start()
    # As its first poll would: the source sick, the others healthy (until then a daemon says unknown).
    verdict = Verdict.SEVERE if name == "host-a" else Verdict.HEALTHY
    view.publisher.set_status(HostStatus(verdict=verdict, reasons=(), quarantined=False))
    try:
        yield view, desk
    finally:
        view.close()
        services.close()
        room.close()


def test_every_vm_lands_on_the_host_with_room_and_none_on_the_full_one(
    tmp_path: Path, clean_fault_lab: LabHosts, broker_settings: BrokerSettings
) -> None:
    lab = clean_fault_lab
    hosts = {h.name: h for h in lab.hosts}
    source = hosts["host-a"]
    vms = [create_vm(source.uri, source.pool, name=f"fit-{i}", tenant="acme", window_seconds=0,
                     disk_bytes=MIB, data=b"x" * 4096, mac=f"52:54:00:fb:01:0{i}") for i in range(3)]

    @contextmanager
    def open_host(name: str) -> Iterator[Hypervisor]:
        with open_libvirt_host(name, hosts[name].uri, hosts[name].pool) as opened:
            yield opened

    with ExitStack() as stack:
        own_view, _ = stack.enter_context(host_daemon(lab, "host-a", broker_settings))
        _, desk_b = stack.enter_context(host_daemon(lab, "host-b", broker_settings))
        _, desk_c = stack.enter_context(host_daemon(lab, "host-c", broker_settings))
        deadline = time.monotonic() + 15
        while {h.name for h in own_view.view.hosts(utc_now()) if h.verdict is Verdict.HEALTHY} \
                != {"host-b", "host-c"}:  # fmt: skip
            assert time.monotonic() < deadline, "host-b's and host-c's healthy states heard"
            time.sleep(0.1)
        claims = PeerClient(blocking_connection_factory(broker_settings, connection_name="test-cloud-claims"),
                            trust=lab_trust(broker_settings, HOSTS), exchange=broker_settings.peers_exchange,
                            timeout_base_seconds=30, min_bytes_per_second=MIB)  # fmt: skip
        destinations = CloudDestinations(
            config=CloudConfig(source="host-a", policy=POLICY, claim_ttl_seconds=600,
                               reachable=frozenset(HOSTS).__contains__),
            view=own_view.view, claims=claims, open_host=open_host, clock=utc_now,
        )  # fmt: skip
        told = RecordedOutcomes()
        with Journal(tmp_path / "journal.sqlite") as journal:
            engine = assemble_engine(
                EngineConfig(host="host-a", peers=("host-b", "host-c"), move_attempts=2,
                             retry_initial_seconds=0.1, queue_picks_destination=False),
                MigrationTimings(shutdown_timeout_seconds=0.3), journal=journal,
                hypervisor=FakeHypervisor(name="host-a"), open_host=open_host, clock=utc_now,
                sleep=time.sleep, destinations=destinations,
            )  # fmt: skip
            engine.plan([PlannedMove(vm_uuid=u, vm_name=f"fit-{i}", tenant="acme", window_seconds=0,
                                     deadline=utc_now()) for i, u in enumerate(vms)],
                        may_restart_on_source=True)  # fmt: skip
            engine.start(timer_pending=lambda _: False, outcomes=told)
            assert engine.wait_idle(180)
            engine.stop()
        assert told.failures == []
        assert sorted(r.vm_uuid for r in told.moves) == sorted(vms)
        assert {r.destination for r in told.moves} == {"host-c"}
        assert desk_c.held() == () and desk_b.held() == (), "every claim released once its VM ran"
    for uuid in vms:
        with open_host("host-c") as c:
            moved = c.find_vm(uuid)
            assert moved is not None and moved.state is VmState.RUNNING
        with open_host("host-b") as b:
            assert b.find_vm(uuid) is None
    assert pool_volumes(hosts["host-b"]) == []
