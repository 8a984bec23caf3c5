"""Transfer slots: the caps hold under contention, priority goes first, a full peer blocks only its own."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import pytest

from evacuator.moves.transfer_slots import NoClusterCap, TransferSlots, held_transfer, held_transfer_now


def test_caps_hold_under_many_threads() -> None:
    slots = TransferSlots(max_outgoing=3, max_incoming_per_peer=2)
    lock = threading.Lock()
    now: Counter[str] = Counter()
    worst_total, worst_peer = 0, 0

    def mover(seed: int) -> None:
        nonlocal worst_total, worst_peer
        rng = random.Random(seed)
        for _ in range(20):
            peer = rng.choice(["host-b", "host-c", "host-d"])
            with slots.slot(peer):
                with lock:
                    now[peer] += 1
                    worst_total = max(worst_total, sum(now.values()))
                    worst_peer = max(worst_peer, now[peer])
                time.sleep(rng.random() / 1000)
                with lock:
                    now[peer] -= 1

    threads = [threading.Thread(target=mover, args=(seed,)) for seed in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert worst_total == 3 and worst_peer == 2  # reached, never passed
    assert slots.in_use() == {}


def _waiting(slots: TransferSlots, order: list[str], name: str, peer: str, priority: int) -> threading.Thread:
    def run() -> None:
        with slots.slot(peer, priority=priority):
            order.append(name)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.05)  # queued in this order
    return thread


def test_higher_priority_waiters_go_first_then_first_come() -> None:
    slots = TransferSlots(max_outgoing=1, max_incoming_per_peer=1)
    order: list[str] = []
    with slots.slot("host-b"):
        waiters = [_waiting(slots, order, name, "host-b", priority)
                   for name, priority in (("low", -1), ("first", 0), ("second", 0), ("top", 5))]
    for waiter in waiters:
        waiter.join(5)
    assert order == ["top", "first", "second", "low"]


def test_a_full_peer_does_not_hold_back_a_waiter_for_another_peer() -> None:
    slots = TransferSlots(max_outgoing=2, max_incoming_per_peer=1)
    order: list[str] = []
    with slots.slot("host-b"):
        to_b = _waiting(slots, order, "to-b", "host-b", 9)
        to_c = _waiting(slots, order, "to-c", "host-c", 0)
        to_c.join(5)
        assert order == ["to-c"]  # went while the earlier, higher waiter for host-b still waits
    to_b.join(5)
    assert order == ["to-c", "to-b"]


@pytest.mark.parametrize(("outgoing", "incoming"), [(0, 1), (1, 0)])
def test_caps_below_one_are_refused(outgoing: int, incoming: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TransferSlots(max_outgoing=outgoing, max_incoming_per_peer=incoming)


class _RecordingCluster:
    """A cloud-wide cap stand-in that records when it is asked and released."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.urgent: list[bool] = []

    @contextmanager
    def hold(self, *, destination: str, vm_uuid: str, urgent: bool = False) -> Iterator[None]:
        self.urgent.append(urgent)
        self.events.append(f"cluster+{vm_uuid}")
        assert destination == "hv-02"
        try:
            yield
        finally:
            self.events.append(f"cluster-{vm_uuid}")


def test_a_transfer_takes_this_hosts_slot_before_the_clouds_and_gives_both_back() -> None:
    events: list[str] = []
    slots = TransferSlots(max_outgoing=1, max_incoming_per_peer=1)
    hold = held_transfer(slots, _RecordingCluster(events), "hv-02", 0)
    first_holds, second_asked = threading.Event(), threading.Event()
    release_first = threading.Event()

    def first() -> None:
        with hold("vm-1"):
            first_holds.set()
            release_first.wait(10)

    def second() -> None:
        second_asked.set()
        with hold("vm-2"):
            events.append("vm-2 transfers")

    one = threading.Thread(target=first)
    one.start()
    assert first_holds.wait(10)
    two = threading.Thread(target=second)
    two.start()
    assert second_asked.wait(10)
    time.sleep(0.2)
    # vm-2 waits for this host's only slot: it asks the cloud for nothing meanwhile.
    assert events == ["cluster+vm-1"] and slots.in_use() == {"hv-02": 1}
    release_first.set()
    one.join(10)
    two.join(10)
    assert events == ["cluster+vm-1", "cluster-vm-1", "cluster+vm-2", "vm-2 transfers", "cluster-vm-2"]
    assert slots.in_use() == {}


@pytest.mark.parametrize("urgent", [False, True])
def test_an_urgent_transfer_says_so_to_the_cloud_wide_caps(urgent: bool) -> None:
    # A failed host's move waits for a cloud-wide slot only a moment (BrokerCloudCaps.hold).
    cluster = _RecordingCluster([])
    with held_transfer(TransferSlots(max_outgoing=1, max_incoming_per_peer=1), cluster, "hv-02", 0,
                       urgent=urgent)("vm-1"):  # fmt: skip
        pass
    assert cluster.urgent == [urgent]


def test_a_slot_now_is_had_only_when_free_and_nobody_who_could_use_it_waits() -> None:
    slots = TransferSlots(max_outgoing=2, max_incoming_per_peer=2)
    with slots.slot_now("host-b") as first, slots.slot_now("host-c") as second:
        assert first and second and slots.in_use() == {"host-b": 1, "host-c": 1}
        with slots.slot_now("host-b") as third:
            assert not third, "the cap is reached"
    assert slots.in_use() == {}

    one = TransferSlots(max_outgoing=1, max_incoming_per_peer=1)
    release, order = threading.Event(), []
    holder = threading.Thread(target=lambda: _hold_until(one, "host-b", release))
    holder.start()
    time.sleep(0.05)
    waiter = _waiting(one, order, "off-vm", "host-b", 0)  # a VM already off, queued for the slot
    release.set()
    holder.join(5)
    with one.slot_now("host-b") as jumped:  # between the release and the waiter's turn, or after it
        assert not jumped or order == ["off-vm"]
    waiter.join(5)
    assert order == ["off-vm"]


def _hold_until(slots: TransferSlots, peer: str, release: threading.Event) -> None:
    with slots.slot(peer):
        release.wait(5)


def test_a_waiter_queued_for_a_full_peer_does_not_keep_a_pre_copy_from_another() -> None:
    slots = TransferSlots(max_outgoing=3, max_incoming_per_peer=1)
    release = threading.Event()
    holder = threading.Thread(target=lambda: _hold_until(slots, "host-b", release))
    holder.start()
    time.sleep(0.05)
    order: list[str] = []
    waiter = _waiting(slots, order, "for-b", "host-b", 0)
    with slots.slot_now("host-b") as to_b, slots.slot_now("host-c") as to_c:
        assert not to_b and to_c
    release.set()
    holder.join(5)
    waiter.join(5)
    assert order == ["for-b"]


class _CloudBusy:
    """Cloud-wide caps whose slots are all taken."""

    def hold(self, *, destination: str, vm_uuid: str) -> AbstractContextManager[None]:
        raise AssertionError("a pre-copy never waits for a slot")

    def hold_now(self, *, destination: str, vm_uuid: str) -> AbstractContextManager[bool]:
        return nullcontext(False)


def test_held_transfer_now_holds_neither_slot_when_the_cloud_wide_one_is_not_free() -> None:
    slots = TransferSlots(max_outgoing=2, max_incoming_per_peer=2)
    with held_transfer_now(slots, _CloudBusy(), "host-b")("vm-1") as held:
        assert not held and slots.in_use() == {}, "neither slot is held"
    with held_transfer_now(slots, NoClusterCap(), "host-b")("vm-1") as held:
        assert held and slots.in_use() == {"host-b": 1}
    assert slots.in_use() == {}
