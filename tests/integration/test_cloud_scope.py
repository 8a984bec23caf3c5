"""With placement.scope cloud the peers list is only the admin's preference: a sick host sends its VMs to a
host it does not list, found on the host view with the libvirt URI that host publishes, and trusted as the
broker user `evacuator host add` made for it. On real libvirt and the real broker, every host its own user
in a peers vhost of its own, each daemon's parts built by the daemon's own wiring from its Settings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.incident.planner import PlannedMove
from evacuator.lab.broker import LabBroker
from evacuator.lab.hosts import LabHosts
from evacuator.lab.vms import MEMORY_MIB, create_vm
from evacuator.peers.state_publisher import HostStatus
from evacuator.placement.model import Verdict
from evacuator.settings import (
    DataChannelSettings,
    EvacuationSettings,
    HostSettings,
    HostViewSettings,
    MetricsSettings,
    PeerSettings,
    PlacementSettings,
    Settings,
)
from evacuator.wiring.host_view import HostViewParts, host_view_for, room_reader_for
from evacuator.wiring.moves import build_engine
from evacuator.wiring.peers import peer_services
from notifiers.settings import BrokerSettings
from tests.fakes.outcomes import RecordedOutcomes
from tests.fixtures.cloud import MIB, utc_now, wait_until_healthy
from tests.security.cloud import Host, Provisioned, provisioned_hosts

pytestmark = pytest.mark.integration

# host-b (the sick host's one listed peer) offers less than a VM's memory; host-c room for several.
GUEST_MEMORY = {"host-a": None, "host-b": MEMORY_MIB * MIB // 2, "host-c": 16 * MEMORY_MIB * MIB}


@pytest.fixture(scope="module")
def users(lab_broker: LabBroker, broker_settings: BrokerSettings,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provisioned]:  # fmt: skip
    """Three hosts' broker users, made by `evacuator host add` (slow: rabbitmqctl), for the module."""
    with provisioned_hosts(lab_broker, broker_settings, tmp_path_factory.mktemp("users"),
                           roles=("a", "b", "c"), label="scope") as made:  # fmt: skip
        yield made


def _settings(tmp_path: Path, lab: LabHosts, lab_name: str, host: Host, peers: list[PeerSettings],
              scope: str) -> Settings:  # fmt: skip
    machine = {h.name: h for h in lab.hosts}[lab_name]
    state_dir = tmp_path / host.name
    state_dir.mkdir()
    return Settings(
        host=HostSettings(name=host.name, libvirt_uri=machine.uri, storage_pool=machine.pool,
                          advertised_libvirt_uri=machine.uri),
        peers=peers, broker=host.settings, data_channel=DataChannelSettings(enabled=False),
        # The lab's guests ignore ACPI: the shutdown is forced once this is up.
        evacuation=EvacuationSettings(shutdown_timeout_seconds=0.3, retry_initial_seconds=0.1),
        host_view=HostViewSettings(interval_seconds=1.0, stale_after_seconds=3.0),
        placement=PlacementSettings.model_validate({"scope": scope, "guest_vcpus": 16,
                                                    "guest_memory_bytes": GUEST_MEMORY[lab_name]}),
        state_dir=state_dir, metrics=MetricsSettings(enabled=False),
    )  # fmt: skip


@contextmanager
def _daemon(settings: Settings, verdict: Verdict) -> Iterator[HostViewParts]:
    """A host's daemon as its peers meet it: its state published, claims and requests answered."""
    room = room_reader_for(settings)
    services = peer_services(settings, room=room)
    view = host_view_for(settings, clock=utc_now)
    services.start()
    view.start()
    view.publisher.set_status(HostStatus(verdict=verdict))
    try:
        yield view
    finally:
        view.close()
        services.close()
        room.close()


@pytest.mark.parametrize("scope", ["cloud", "peers"])
def test_a_host_no_one_listed_takes_the_vms_in_a_cloud_scope_and_only_then(
    scope: str, tmp_path: Path, clean_fault_lab: LabHosts, users: Provisioned,
) -> None:  # fmt: skip
    lab = clean_fault_lab
    machines = {h.name: h for h in lab.hosts}
    with ExitStack() as stack:
        a, b, c = users.hosts["a"], users.hosts["b"], users.hosts["c"]
        listed_b = PeerSettings(name=b.name, libvirt_uri=machines["host-b"].uri,
                                storage_pool=machines["host-b"].pool)  # fmt: skip
        settings = {
            "a": _settings(tmp_path, lab, "host-a", a, [listed_b], scope),
            "b": _settings(tmp_path, lab, "host-b", b, [], "cloud"),
            "c": _settings(tmp_path, lab, "host-c", c, [], "cloud"),
        }
        views = {role: stack.enter_context(_daemon(settings[role], Verdict.SEVERE if role == "a"
                                                   else Verdict.HEALTHY)) for role in settings}  # fmt: skip
        wait_until_healthy(views["a"].view, (b.name, c.name))
        assert views["a"].view.reach_of(c.name) == (machines["host-c"].uri, machines["host-c"].pool)
        vms = {create_vm(machines["host-a"].uri, machines["host-a"].pool, name=f"scope-{i}", tenant="acme",
                         window_seconds=0, disk_bytes=MIB, data=b"s" * 4096,
                         mac=f"52:54:00:fd:01:0{i}"): f"scope-{i}" for i in range(2)}  # fmt: skip
        told = RecordedOutcomes()
        with open_libvirt_host(a.name, machines["host-a"].uri, machines["host-a"].pool) as own:
            engine = build_engine(settings["a"], own, clock=utc_now, view=views["a"].view)
            engine.plan([PlannedMove(vm_uuid=uuid, vm_name=name, tenant="acme", window_seconds=0,
                                     deadline=utc_now()) for uuid, name in vms.items()],
                        may_restart_on_source=True)  # fmt: skip
            started = time.monotonic()
            engine.start(timer_pending=lambda _: False, outcomes=told)
            assert engine.wait_idle(180), f"moves ended within {time.monotonic() - started:.0f} s"
            engine.stop()
    if scope == "cloud":
        assert told.failures == [] and {r.destination for r in told.moves} == {c.name}
        where, elsewhere = "host-c", ("host-a", "host-b")
    else:  # host-c is no peer of host-a: never a destination, however much room it publishes
        assert told.moves == [] and all(reason.startswith("no_capacity: ") for _, reason in told.failures)
        where, elsewhere = "host-a", ("host-b", "host-c")
    for uuid in vms:
        with open_libvirt_host(where, machines[where].uri, machines[where].pool) as host:
            vm = host.find_vm(uuid)
            assert vm is not None and vm.state is VmState.RUNNING
        for other in elsewhere:
            with open_libvirt_host(other, machines[other].uri, machines[other].pool) as host:
                assert host.find_vm(uuid) is None
