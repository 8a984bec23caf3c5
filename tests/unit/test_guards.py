"""The blast-radius guards: the pure decision (placement/guards.py) as a table, and the gate every move
passes (moves/guard.py) over a hand-written broker state and host view."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from evacuator.moves.guard import CloudGuard
from evacuator.placement.guards import Evacuating, GuardPolicy, Hold, HoldCause, check, evacuation_slots
from evacuator.placement.model import HostState, Room, Verdict
from tests.fakes.guards import FakeGuardState as FakeState
from tests.fakes.guards import FakeGuardView as FakeView

GIB = 1 << 30
T0 = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
POLICY = GuardPolicy(max_evacuating_share=0.25, min_free_share=0.10, min_start_spacing_seconds=600)


def host(name: str, *, verdict: Verdict = Verdict.HEALTHY, free_gib: int = 60,
         **changes: object) -> HostState:  # fmt: skip
    state = HostState(name=name, verdict=verdict, seen_at=T0,
                      capacity=Room(memory_bytes=100 * GIB, vcpus=64, disk_bytes=1000 * GIB),
                      free=Room(memory_bytes=free_gib * GIB, vcpus=40, disk_bytes=600 * GIB))  # fmt: skip
    return replace(state, **changes)  # type: ignore[arg-type]


CLOUD = [host("me", verdict=Verdict.SEVERE), *(host(f"hv-{i}") for i in range(9))]
LEAVING = Room(memory_bytes=40 * GIB, vcpus=20, disk_bytes=300 * GIB)


@pytest.mark.parametrize(("host_count", "slots"),
                         [(1, 1), (3, 1), (4, 1), (8, 2), (10, 2), (12, 3), (1000, 250)])  # fmt: skip
def test_a_quarter_of_the_cloud_rounded_down_and_never_none(host_count: int, slots: int) -> None:
    assert evacuation_slots(host_count, POLICY) == slots


@pytest.mark.parametrize(
    ("failed", "paused", "hosts", "evacuating", "cause"),
    [
        pytest.param(False, False, CLOUD, [], None, id="nobody-evacuates"),
        pytest.param(False, False, CLOUD, [Evacuating(host="hv-1", since=T0 - timedelta(hours=1))], None,
                     id="one-evacuates-long-ago"),
        pytest.param(False, False, CLOUD, [Evacuating(host="hv-1", since=T0 - timedelta(hours=1)),
                                           Evacuating(host="hv-2", since=T0 - timedelta(hours=1))],
                     HoldCause.TOO_MANY_EVACUATING, id="two-of-ten-evacuate"),
        pytest.param(True, False, CLOUD, [Evacuating(host="hv-1", since=T0),
                                          Evacuating(host="hv-2", since=T0)],
                     None, id="a-failed-host-never-waits"),
        pytest.param(True, True, CLOUD, [], HoldCause.PAUSED, id="a-pause-holds-even-a-failed-host"),
        pytest.param(False, False, CLOUD, [Evacuating(host="hv-1", since=T0 - timedelta(seconds=60))],
                     HoldCause.TOO_SOON, id="another-began-a-minute-ago"),
        pytest.param(False, False, [host("me", verdict=Verdict.SEVERE), host("hv-1", free_gib=45)], [],
                     HoldCause.TOO_LITTLE_ROOM, id="would-leave-less-than-a-tenth-free"),
        pytest.param(False, False, [host("me", verdict=Verdict.SEVERE), host("hv-1", free_gib=50),
                                    host("hv-2", free_gib=0, quarantined=True)], [], None,
                     id="exactly-a-tenth-left-is-enough"),
        pytest.param(False, False, [host("me", verdict=Verdict.SEVERE), host("hv-1", verdict=Verdict.SEVERE)],
                     [], HoldCause.TOO_LITTLE_ROOM, id="no-host-takes-vms"),
        pytest.param(False, False, CLOUD, [Evacuating(host="me", since=T0)], None,
                     id="its-own-start-counts-not"),
    ],
)  # fmt: skip
def test_the_guards_hold_a_severe_host_for_each_reason(
    failed: bool, paused: bool, hosts: list[HostState], evacuating: list[Evacuating], cause: HoldCause | None
) -> None:
    hold = check(me="me", failed=failed, paused=paused, hosts=hosts, evacuating=evacuating, leaving=LEAVING,
                 now=T0, policy=POLICY)  # fmt: skip
    assert (None if hold is None else hold.cause) is cause


def test_too_soon_says_until_when() -> None:
    since = T0 - timedelta(seconds=60)
    hold = check(me="me", failed=False, paused=False, hosts=CLOUD,
                 evacuating=[Evacuating(host="hv-1", since=since)], leaving=LEAVING, now=T0,
                 policy=POLICY)  # fmt: skip
    assert hold is not None and hold.until == since + timedelta(seconds=600) and "hv-1" in hold.detail


@pytest.mark.parametrize("changes", [{"max_evacuating_share": 0}, {"min_free_share": 1.0},
                                     {"min_start_spacing_seconds": -1}])
def test_a_policy_out_of_range_is_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GuardPolicy(**changes)


# --- the gate -------------------------------------------------------------------------------------------


def gate(state: FakeState, view: FakeView, announced: list[datetime | None]) -> CloudGuard:
    def announce(since: datetime | None) -> None:
        announced.append(since)
        if since is not None:
            view.evacuating["me"] = since
        else:
            view.evacuating.pop("me", None)

    return CloudGuard(host="me", policy=POLICY, state=state, view=view, announce=announce, clock=lambda: T0,
                      poll_seconds=0.01)


def test_a_severe_host_takes_a_permit_says_it_evacuates_and_gives_both_back_at_the_end() -> None:
    state, view, announced = FakeState(), FakeView(CLOUD), []
    guard = gate(state, view, announced)
    guard.begin(failed=False)
    assert guard.admit(lambda: False) and guard.admit(lambda: False)
    assert state.held == {0} and announced == [T0], "one permit and one announcement for the incident"
    guard.end()
    assert state.held == set() and announced == [T0, None]


def test_a_held_host_tells_each_new_cause_once_and_goes_when_a_permit_frees() -> None:
    state = FakeState(held={0, 1})  # two of ten hosts' permits held by others
    view = FakeView(CLOUD, {"hv-1": T0 - timedelta(hours=1), "hv-2": T0 - timedelta(hours=1)})
    told: list[Hold] = []
    guard = gate(state, view, [])
    guard.begin(failed=False, on_hold=told.append)
    admitted = threading.Event()
    worker = threading.Thread(target=lambda: guard.admit(lambda: False) and admitted.set())
    with capture_logs() as logs:
        worker.start()
        assert not admitted.wait(0.3), "held while two of ten evacuate"
        del view.evacuating["hv-2"]
        state.held.discard(1)
        assert admitted.wait(5)
        worker.join()
    assert [h.cause for h in told] == [HoldCause.TOO_MANY_EVACUATING]
    events = [e["event"] for e in logs]
    assert events.count("evacuation_held") == 1 and "evacuation_admitted" in events


def test_a_failed_host_jumps_the_queue_and_a_pause_holds_every_next_move() -> None:
    state = FakeState(held={0, 1})
    view = FakeView(CLOUD, {"hv-1": T0, "hv-2": T0})
    guard = gate(state, view, [])
    guard.begin(failed=True)
    assert guard.admit(lambda: False), "no permit free, and it goes anyway"
    state.pause = object()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert not guard.admit(stop.is_set), "paused: held until the engine stops"
    state.pause = None
    assert guard.admit(lambda: False)


def test_an_unreachable_broker_lets_the_move_go_saying_so() -> None:
    guard = gate(FakeState(unreachable=True), FakeView(CLOUD), [])
    guard.begin(failed=False)
    with capture_logs() as logs:
        assert guard.admit(lambda: False)
    assert any(e["event"] == "guard_unavailable" for e in logs)


def test_the_gate_says_whether_the_pause_holds_and_fails_open_when_it_cannot_know() -> None:
    state = FakeState()
    guard = gate(state, FakeView(CLOUD), [])
    assert not guard.paused()
    state.pause = object()
    assert guard.paused()
    with capture_logs() as logs:
        assert not gate(FakeState(unreachable=True), FakeView(CLOUD), []).paused()
    assert [e["event"] for e in logs] == ["guard_unavailable"]


def test_the_incident_ending_never_waits_for_a_move_held_at_the_gate() -> None:
    """end() (the incident closing on the poll loop) while a worker is held: it returns at once (it once
    waited for the worker's lock, which the worker held while waiting: the daemon's poll loop hung)."""
    guard = gate(FakeState(held={0, 1}), FakeView(CLOUD, {"hv-1": T0, "hv-2": T0}), [])
    guard.begin(failed=False)
    stop = threading.Event()
    worker = threading.Thread(target=guard.admit, args=(stop.is_set,), daemon=True)
    worker.start()
    time.sleep(0.1)  # the worker is held now
    ended = threading.Thread(target=guard.end, daemon=True)
    ended.start()
    ended.join(2)
    assert not ended.is_alive(), "end() returned while a move is held"
    stop.set()
    worker.join(2)
    assert not worker.is_alive()
