"""Where a move goes: the static peers, and the cloud's choice over the host view held by claims (fakes)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmState, parse_definition
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.cloud_destinations import CloudConfig, CloudDestinations, claim_id_for
from evacuator.moves.destinations import NO_PEER_LEFT, Held, Nowhere, StaticPeers
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from evacuator.peers.claim_desk import free_above_reserve
from evacuator.placement.model import HostState, PlacementPolicy, Room, Verdict
from evacuator.wiring.moves import assemble_engine
from tests.fakes.outcomes import RecordedOutcomes
from tests.fakes.room import FakeRoomReader, a_room
from tests.unit.test_engine import POOL, T0, Hosts, planned

MIB = 1 << 20
GIB = 1 << 30


def record_of(vm_uuid: str, *, group: str | None = None, attempt: int = 0) -> MoveRecord:
    return MoveRecord(vm_uuid=vm_uuid, vm_name="web", tenant="acme", source="host-a", destination=None,
                      state=MoveState.WAITING, phase=Phase.DUE, step=None, start_on_destination=None,
                      may_restart_on_source=True, deadline=T0, attempt=attempt, error=None, updated_at=T0,
                      group=group)  # fmt: skip


@pytest.mark.parametrize(("peers", "tried", "expected"), [
    (("host-b", "host-c"), (), "host-b"),
    (("host-b", "host-c"), ("host-b",), "host-c"),
    (("host-b", "host-c"), ("host-b", "host-c"), None),
    ((), (), None),
])  # fmt: skip
def test_static_peers_are_tried_in_order(peers: tuple[str, ...], tried: tuple[str, ...],
                                         expected: str | None) -> None:  # fmt: skip
    choice = StaticPeers(peers).choose([record_of("u1")], tried)
    if expected is None:
        assert isinstance(choice, Nowhere) and choice.reason == NO_PEER_LEFT
    else:
        assert isinstance(choice, Held) and choice.host == expected and choice.claim_id is None


@pytest.mark.parametrize(("memory", "size"), [
    ("<memory unit='MiB'>64</memory>", 64 * MIB),
    ("<memory>2048</memory>", 2 * MIB),  # KiB without a unit
    ("<memory unit='GiB'>2</memory>", 2 * GIB),
    ("<memory unit='bytes'>4096</memory>", 4096),
    ("", 0),
])  # fmt: skip
def test_a_definition_gives_the_guests_memory_and_vcpus(memory: str, size: int) -> None:
    xml = f"<domain><name>web</name><uuid>{uuid.uuid4()}</uuid>{memory}<vcpu>3</vcpu></domain>"
    definition = parse_definition(xml)
    assert (definition.memory_bytes, definition.vcpus) == (size, 3)


def test_a_memory_unit_libvirt_does_not_know_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="unit"):
        parse_definition(f"<domain><name>w</name><uuid>{uuid.uuid4()}</uuid>"
                         "<memory unit='x'>1</memory></domain>")


# --- the cloud's choice ----------------------------------------------------------------------------------


def host(name: str, *, memory_free: int = 8 * GIB, seen_at: datetime = T0, **changes: object) -> HostState:
    state = HostState(name=name, verdict=Verdict.HEALTHY, seen_at=seen_at,
                      capacity=Room(memory_bytes=16 * GIB, vcpus=16, disk_bytes=100 * GIB),
                      free=Room(memory_bytes=memory_free, vcpus=16, disk_bytes=100 * GIB))  # fmt: skip
    return replace(state, **changes)  # type: ignore[arg-type]


class FakeView:
    def __init__(self, hosts: Sequence[HostState]) -> None:
        self.states = list(hosts)

    def hosts(self, now: datetime) -> list[HostState]:
        return list(self.states)


@dataclass(frozen=True)
class Answer:
    granted: bool
    reason: str | None = None
    available: Room | None = None


class FakeClaims:
    """Answers claims per host as told (granted by default); records every claim and release."""

    def __init__(self, answers: dict[str, Answer] | None = None) -> None:
        self.answers = answers or {}
        self.claims: list[tuple[str, str, Room, tuple[str, ...]]] = []
        self.functions: list[frozenset[tuple[str, str]]] = []
        self.releases: list[tuple[str, str]] = []

    def claim(self, host: str, *, claim_id: str, room: Room, vm_uuids: Sequence[str], ttl_seconds: int,
              functions: Collection[tuple[str, str]] = ()) -> Answer:  # fmt: skip
        self.claims.append((host, claim_id, room, tuple(vm_uuids)))
        self.functions.append(frozenset(functions))
        return self.answers.get(host, Answer(granted=True))

    def release(self, host: str, claim_id: str) -> bool:
        self.releases.append((host, claim_id))
        return True


def cloud(hosts: Hosts, view: FakeView, claims: FakeClaims, *,
          reachable: Sequence[str] = ("host-b", "host-c"),
          preferred: tuple[str, ...] = (), claim_ttl_seconds: int = 600) -> CloudDestinations:  # fmt: skip
    policy = PlacementPolicy(stale_after_seconds=15, reserve_fraction=0.05, preferred=preferred)
    config = CloudConfig(source="host-a", policy=policy, claim_ttl_seconds=claim_ttl_seconds,
                         reachable=frozenset(reachable).__contains__)
    return CloudDestinations(config=config, view=view, claims=claims, open_host=hosts.open, clock=lambda: T0)


def test_the_vm_goes_to_the_host_with_room_not_the_preferred_full_one() -> None:
    hosts, claims = Hosts(), FakeClaims()
    web = hosts.add_vm("web")
    view = FakeView([host("host-a"), host("host-b", memory_free=32 * MIB), host("host-c")])
    choice = cloud(hosts, view, claims, preferred=("host-b", "host-c")).choose([record_of(web)], ())
    assert isinstance(choice, Held) and choice.host == "host-c"
    [(claimed_on, claim_id, room, vms)] = claims.claims
    assert (claimed_on, claim_id, vms) == ("host-c", f"host-a.{web}.0", (web,))
    assert room.memory_bytes == 64 * MIB and room.vcpus == 1 and room.disk_bytes > 0
    with choice:
        assert claims.releases == []
    assert claims.releases == [("host-c", f"host-a.{web}.0")], "released when the move ends"


@pytest.mark.parametrize("answer", [Answer(granted=False, reason="no_room"),
                                    Answer(granted=False, reason="no daemon of host-b listens")])
def test_a_refused_or_unanswered_claim_rules_the_host_out_and_plans_again(answer: Answer) -> None:
    hosts = Hosts()
    claims = FakeClaims({"host-b": answer})
    web = hosts.add_vm("web")
    view = FakeView([host("host-b"), host("host-c")])
    choice = cloud(hosts, view, claims, preferred=("host-b",)).choose([record_of(web)], ())
    assert isinstance(choice, Held) and choice.host == "host-c"
    assert [c[0] for c in claims.claims] == ["host-b", "host-c"]
    assert claims.releases == [("host-b", f"host-a.{web}.0")], "a grant whose answer was lost is given back"


@pytest.mark.parametrize(("states", "tried", "reason"), [
    ([host("host-b", memory_free=0), host("host-c", memory_free=0)], (), "no_capacity"),
    ([host("host-b", verdict=Verdict.SEVERE), host("host-c", quarantined=True)], (), "no_healthy_host"),
    ([host("host-b", seen_at=T0 - timedelta(seconds=60)), host("host-c", maintenance=True)], (),
     "no_healthy_host"),
    ([host("host-b"), host("host-c")], ("host-b", "host-c"), "no_healthy_host"),
    ([host("host-b", functions=frozenset({("acme", "db")}))], (), "anti_affinity"),
    ([host("host-x")], (), "no_healthy_host"),  # a host this daemon cannot reach is no destination
])  # fmt: skip
def test_nowhere_to_go_says_why(states: list[HostState], tried: tuple[str, ...], reason: str) -> None:
    hosts, claims = Hosts(), FakeClaims()
    web = hosts.add_vm("web", VmFacts(tenant="acme", function="db"))
    choice = cloud(hosts, FakeView(states), claims).choose([record_of(web)], tried)
    assert isinstance(choice, Nowhere) and choice.reason == reason and claims.claims == []
    assert choice.message.startswith(f"{reason}: ")


def test_a_room_refusal_corrects_the_host_and_the_tenant_hears_no_capacity() -> None:
    """The view said host-b had room; its daemon says what is left: re-planned with that, the VM fits
    nowhere, and the reason is the real one, not "no healthy host"."""
    hosts = Hosts()
    claims = FakeClaims({"host-b": Answer(granted=False, reason="no_room", available=Room(memory_bytes=MIB))})
    web = hosts.add_vm("web")
    choice = cloud(hosts, FakeView([host("host-b")]), claims).choose([record_of(web)], ())
    assert isinstance(choice, Nowhere) and choice.reason == "no_capacity"
    assert [c[0] for c in claims.claims] == ["host-b"], "not asked twice: its answer was believed"


def test_a_function_refusal_sends_the_replica_elsewhere_or_says_anti_affinity() -> None:
    """host-b's view lacks the db replica that just landed there (or that another source is sending): its
    daemon refuses with function_taken; the VM goes to host-c, or with no host-c stays: anti_affinity."""
    hosts = Hosts()
    claims = FakeClaims({"host-b": Answer(granted=False, reason="function_taken")})
    db = hosts.add_vm("db", VmFacts(tenant="acme", function="db"))
    choice = cloud(hosts, FakeView([host("host-b"), host("host-c")]), claims,
                   preferred=("host-b",)).choose([record_of(db)], ())  # fmt: skip
    assert isinstance(choice, Held) and choice.host == "host-c"
    assert claims.functions == [frozenset({("acme", "db")})] * 2, "every claim names the VM's function"
    alone = cloud(hosts, FakeView([host("host-b")]), claims).choose([record_of(db)], ())
    assert isinstance(alone, Nowhere) and alone.reason == "anti_affinity"


def test_a_host_refusing_again_after_its_correction_is_ruled_out() -> None:
    """A daemon whose refusals contradict themselves (room left, then no room for it) cannot loop us."""
    hosts = Hosts()
    claims = FakeClaims({"host-b": Answer(granted=False, reason="no_room",
                                          available=Room(memory_bytes=GIB, vcpus=8, disk_bytes=GIB))})
    web = hosts.add_vm("web")
    choice = cloud(hosts, FakeView([host("host-b"), host("host-c")]), claims,
                   preferred=("host-b",)).choose([record_of(web)], ())  # fmt: skip
    assert isinstance(choice, Held) and choice.host == "host-c"
    assert [c[0] for c in claims.claims] == ["host-b", "host-b", "host-c"]


def test_a_group_is_claimed_as_one_on_one_host() -> None:
    hosts, claims = Hosts(), FakeClaims()
    db, app = hosts.add_vm("db"), hosts.add_vm("app")
    records = [record_of(db, group="shop", attempt=2), record_of(app, group="shop", attempt=2)]
    choice = cloud(hosts, FakeView([host("host-b"), host("host-c")]), claims).choose(records, ())
    assert isinstance(choice, Held)
    [(claimed_on, claim_id, room, vms)] = claims.claims
    assert claimed_on == choice.host and claim_id == "host-a.group-shop.2" and set(vms) == {db, app}
    assert room.memory_bytes == 2 * 64 * MIB


def test_claim_ids_are_stable_and_wire_safe() -> None:
    record = record_of("u1", group="a group/with:odd chars")
    assert claim_id_for("host-a", [record]) == claim_id_for("host-a", [record]) == \
        "host-a.group-a-group-with-odd-chars.0"


def test_resuming_claims_again_on_the_journaled_host_whatever_it_answers() -> None:
    hosts = Hosts()
    claims = FakeClaims({"host-b": Answer(granted=False, reason="no_room")})
    web = hosts.add_vm("web")
    held = cloud(hosts, FakeView([]), claims).resume([record_of(web)], "host-b")
    assert held.host == "host-b" and held.claim_id is None
    assert [c[0] for c in claims.claims] == ["host-b"]


def test_claims_are_answered_above_the_same_reserve_placement_keeps() -> None:
    room = FakeRoomReader(a_room(memory_capacity_bytes=16 * GIB, memory_free_bytes=15 * GIB))
    live = free_above_reserve(room, PlacementPolicy(stale_after_seconds=15, reserve_fraction=0.05))()
    assert live.free.memory_bytes == 15 * GIB - math.ceil(16 * GIB * 0.05)


# --- the engine with the cloud's choice --------------------------------------------------------------------


def run_cloud(tmp_path: Path, hosts: Hosts, vm_uuids: Sequence[str], view: FakeView,
              claims: FakeClaims) -> RecordedOutcomes:  # fmt: skip
    told = RecordedOutcomes()
    ticks = iter(range(10**6))
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = assemble_engine(
            EngineConfig(host="host-a", peers=("host-b", "host-c"), retry_initial_seconds=0,
                         queue_picks_destination=False),
            MigrationTimings(shutdown_timeout_seconds=1), journal=journal, hypervisor=hosts.source,
            open_host=hosts.open, clock=lambda: T0 + timedelta(seconds=next(ticks)), sleep=lambda s: None,
            destinations=cloud(hosts, view, claims, preferred=("host-b", "host-c")),
        )  # fmt: skip
        engine.plan([planned(u, "web") for u in vm_uuids], may_restart_on_source=True)
        engine.start(timer_pending=lambda _: False, outcomes=told)
        assert engine.wait_idle(10)
        engine.stop()
    return told


def test_every_vm_lands_on_the_host_with_room_and_none_on_the_full_one(tmp_path: Path) -> None:
    hosts, claims = Hosts(), FakeClaims()
    vms = [hosts.add_vm(name) for name in ("web", "db", "app")]
    view = FakeView([host("host-b", memory_free=32 * MIB), host("host-c")])
    told = run_cloud(tmp_path, hosts, vms, view, claims)
    assert sorted(r.vm_uuid for r in told.moves) == sorted(vms) and told.failures == []
    assert {r.destination for r in told.moves} == {"host-c"}
    assert hosts.destination.list_vms() == ()
    assert sorted(claims.releases) == sorted(c[:2] for c in claims.claims), "every claim given back"


def test_a_vm_that_fits_nowhere_stays_running_and_its_tenant_hears_no_capacity(tmp_path: Path) -> None:
    hosts, claims = Hosts(), FakeClaims()
    web = hosts.add_vm("web")
    view = FakeView([host("host-b", memory_free=0), host("host-c", memory_free=0)])
    told = run_cloud(tmp_path, hosts, [web], view, claims)
    [(record, reason)] = told.failures
    assert record.state is MoveState.FAILED and reason.startswith("no_capacity: ")
    still = hosts.source.peek_vm(web)
    assert still is not None and still.state is VmState.RUNNING
    assert hosts.source.volume_names() == ((POOL, "web.raw"),) and claims.claims == []


def test_a_failed_move_tries_the_next_choice_with_its_claim(tmp_path: Path) -> None:
    hosts, claims = Hosts(), FakeClaims()
    web = hosts.add_vm("web")
    hosts.destination.inject_error("start_vm", HypervisorError("host-b: cannot start"), times=3)
    told = run_cloud(tmp_path, hosts, [web], FakeView([host("host-b"), host("host-c")]), claims)
    assert [r.destination for r in told.moves] == ["host-c"]
    assert [c[0] for c in claims.claims] == ["host-b", "host-c"]
    assert sorted(claims.releases) == [("host-b", f"host-a.{web}.0"), ("host-c", f"host-a.{web}.0")]


def test_a_held_claim_is_renewed_until_released_even_when_a_renewal_is_refused() -> None:
    hosts, claims = Hosts(), FakeClaims()
    web = hosts.add_vm("web")
    with capture_logs() as logs:
        held = cloud(hosts, FakeView([host("host-a"), host("host-b")]), claims, claim_ttl_seconds=1).choose(
            [record_of(web)], ())
        assert isinstance(held, Held)
        with held:  # a copy longer than the claim's TTL (1 s; renewed every third of it)
            time.sleep(0.5)
            claims.answers["host-b"] = Answer(granted=False, reason="claim_changed")
            time.sleep(0.7)
        renewed = len(claims.claims) - 1
        time.sleep(0.7)
    assert renewed >= 3, claims.claims
    assert len(claims.claims) == renewed + 1, "no renewal after the release"
    assert len({(c[0], c[1], c[2], c[3]) for c in claims.claims}) == 1, "the same id and content each time"
    assert claims.releases == [("host-b", held.claim_id)]
    assert any(e["event"] == "claim_renewal_failed" and e["error"] == "claim_changed" for e in logs)
