"""VMs go only where they fit, on real libvirt and the real broker: three lab hosts, host-a sick, host-b's
advertised memory too small for its VMs, host-c healthy; each host publishes its state and answers claims as
its daemon does (tests/fixtures/cloud.py). Every VM lands on host-c, none on host-b; two replicas of one
function never share host-c; and once host-c's daemon dies mid-evacuation no move goes there blind."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmState
from evacuator.hypervisor.room import RoomCaps
from evacuator.lab.hosts import LabHosts, pool_volumes
from evacuator.lab.vms import MEMORY_MIB, create_vm
from evacuator.moves.state import MoveRecord
from evacuator.placement.model import Verdict
from notifiers.settings import BrokerSettings
from tests.fakes.outcomes import RecordedOutcomes
from tests.fixtures.cloud import (
    MIB,
    HostDaemon,
    evacuate,
    host_daemon,
    lab_opener,
    recording_claims,
    utc_now,
    wait_until_healthy,
)

pytestmark = pytest.mark.integration

# host-b offers its guests less than one lab VM's memory; host-c room for several (vCPUs too: the lab machine
# has few, shared by the three hosts).
CAPS = {"host-a": RoomCaps(), "host-b": RoomCaps(guest_memory_bytes=MEMORY_MIB * MIB // 2),
        "host-c": RoomCaps(guest_memory_bytes=16 * MEMORY_MIB * MIB, guest_vcpus=16)}


def _cloud(stack: ExitStack, lab: LabHosts, broker: BrokerSettings) -> dict[str, HostDaemon]:
    daemons = {name: stack.enter_context(host_daemon(
        lab, name, broker, caps=CAPS[name], verdict=Verdict.SEVERE if name == "host-a" else Verdict.HEALTHY,
    )) for name in ("host-a", "host-b", "host-c")}  # fmt: skip
    wait_until_healthy(daemons["host-a"].view.view, ("host-b", "host-c"))
    return daemons


def _vms(lab: LabHosts, names: list[str], facts: VmFacts | None = None) -> dict[str, str]:
    source = {h.name: h for h in lab.hosts}["host-a"]
    return {create_vm(source.uri, source.pool, name=name, tenant="acme", window_seconds=0, disk_bytes=MIB,
                      data=b"x" * 4096, mac=f"52:54:00:fb:01:{index:02x}", facts=facts): name
            for index, name in enumerate(names)}  # fmt: skip


def _where(lab: LabHosts, uuid: str) -> dict[str, VmState]:
    """Every lab host the VM is defined on, with its state there."""
    found = {}
    for name in ("host-a", "host-b", "host-c"):
        with lab_opener(lab)(name) as host:
            vm = host.find_vm(uuid)
            if vm is not None:
                found[name] = vm.state
    return found


def test_every_vm_lands_on_the_host_with_room_and_none_on_the_full_one(
    tmp_path: Path, clean_fault_lab: LabHosts, broker_settings: BrokerSettings
) -> None:
    lab = clean_fault_lab
    vms = _vms(lab, [f"fit-{i}" for i in range(3)])
    told = RecordedOutcomes()
    with ExitStack() as stack:
        daemons = _cloud(stack, lab, broker_settings)
        claims = recording_claims(broker_settings, "host-a")
        evacuate(tmp_path, lab, "host-a", vms, view=daemons["host-a"].view.view, claims=claims, outcomes=told)
        assert daemons["host-c"].desk.held() == () and daemons["host-b"].desk.held() == (), \
            "every claim released once its VM ran"  # fmt: skip
    assert told.failures == []
    assert sorted(r.vm_uuid for r in told.moves) == sorted(vms)
    assert {r.destination for r in told.moves} == {"host-c"}
    for uuid in vms:
        assert _where(lab, uuid) == {"host-c": VmState.RUNNING}
    assert pool_volumes({h.name: h for h in lab.hosts}["host-b"]) == []


def test_two_replicas_of_one_function_never_share_a_host(
    tmp_path: Path, clean_fault_lab: LabHosts, broker_settings: BrokerSettings
) -> None:
    """Two acme "db" VMs, one host with room (host-c): one replica moves there; the other stays running on
    its source, its tenant told anti_affinity, whether placement saw the first one on host-c in the view or
    host-c's daemon refused the claim (function_taken) because it expected it."""
    lab = clean_fault_lab
    vms = _vms(lab, ["db-1", "db-2"], VmFacts(tenant="acme", window_seconds=0, function="db"))
    told = RecordedOutcomes()
    with ExitStack() as stack:
        daemons = _cloud(stack, lab, broker_settings)
        evacuate(tmp_path, lab, "host-a", vms, view=daemons["host-a"].view.view,
                 claims=recording_claims(broker_settings, "host-a"), outcomes=told)  # fmt: skip
        assert daemons["host-c"].desk.held() == ()
    [moved] = told.moves
    [(stayed, reason)] = told.failures
    assert moved.destination == "host-c" and reason.startswith("anti_affinity: "), reason
    assert _where(lab, moved.vm_uuid) == {"host-c": VmState.RUNNING}
    assert _where(lab, stayed.vm_uuid) == {"host-a": VmState.RUNNING}, "never touched, still serving"


class _KillOnFirstMove(RecordedOutcomes):
    """Kills host-c's daemon the moment the first VM is verified running there, on the mover's own thread,
    before it takes the next move (the engine moves one at a time here)."""

    def __init__(self, daemon: HostDaemon) -> None:
        super().__init__()
        self._daemon = daemon

    def moved(self, record: MoveRecord) -> None:
        super().moved(record)
        if len(self.moves) == 1:
            self._daemon.stop()


def test_once_the_destinations_daemon_dies_no_move_goes_there_blind(
    tmp_path: Path, clean_fault_lab: LabHosts, broker_settings: BrokerSettings
) -> None:
    """host-c's daemon dies after the first of three moves: its libvirt still answers, its state is still
    fresh in host-a's view for a few seconds, but no daemon answers its claims, so the next moves never go
    there; they stay running on host-a (host-b has no room), told no_capacity. Once host-c's state is stale
    it is not even asked: a later move fails the same way without a claim sent to host-c."""
    lab = clean_fault_lab
    vms = _vms(lab, [f"kill-{i}" for i in range(4)])
    first_three = dict(list(vms.items())[:3])
    last = dict(list(vms.items())[3:])
    with ExitStack() as stack:
        daemons = _cloud(stack, lab, broker_settings)
        view = daemons["host-a"].view.view
        told = _KillOnFirstMove(daemons["host-c"])
        claims = recording_claims(broker_settings, "host-a")
        evacuate(tmp_path, lab, "host-a", first_three, view=view, claims=claims, outcomes=told,
                 one_at_a_time=True)  # fmt: skip
        [first] = told.moves
        assert first.destination == "host-c"
        assert [r.vm_uuid for r, _ in told.failures] == list(first_three)[1:]
        assert all(reason.startswith("no_capacity: ") for _, reason in told.failures), told.failures
        # Each later move planned host-c (fresh in the view), claimed it, heard nobody, and ruled it out.
        assert claims.asked == ["host-c", "host-c", "host-c"]

        deadline = time.monotonic() + 15
        while {h.name: h.verdict for h in view.hosts(utc_now())}["host-c"] is not Verdict.UNKNOWN:
            assert time.monotonic() < deadline, "host-c's state went stale"
            time.sleep(0.2)
        later = RecordedOutcomes()
        claims.asked.clear()
        (tmp_path / "later").mkdir()
        evacuate(tmp_path / "later", lab, "host-a", last, view=view, claims=claims, outcomes=later)
        [(_, reason)] = later.failures
        assert reason.startswith("no_capacity: ") and claims.asked == [], "a stale host is not asked"
    assert _where(lab, first.vm_uuid) == {"host-c": VmState.RUNNING}
    for uuid in [*list(first_three)[1:], *last]:
        assert _where(lab, uuid) == {"host-a": VmState.RUNNING}
