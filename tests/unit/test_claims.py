"""The claim book (pure): grants within the free room less the reserve and the claims held, retries and
renewals that book nothing twice, releases, expiry, and a property test over random interleavings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evacuator.placement.claims import (
    Claim,
    ClaimAsk,
    ClaimBook,
    ClaimRules,
    Granted,
    Refused,
)
from evacuator.placement.model import Room

GIB = 1 << 30
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FREE = Room(memory_bytes=16 * GIB, vcpus=8, disk_bytes=100 * GIB)
VM = Room(memory_bytes=4 * GIB, vcpus=2, disk_bytes=20 * GIB)


def _ask(claim_id: str = "c1", requester: str = "host.a", room: Room = VM, ttl_seconds: float = 600,
         vm_uuids: tuple[str, ...] = ("vm-1",), function: str | None = None) -> ClaimAsk:  # fmt: skip
    return ClaimAsk(claim_id=claim_id, requester=requester, room=room, vm_uuids=vm_uuids,
                    ttl_seconds=ttl_seconds,
                    functions=frozenset() if function is None else frozenset({("acme", function)}))


RUNNING = frozenset({("acme", "web")})  # the host runs one acme web VM


def _run(book: ClaimBook, *asks: ClaimAsk, free: Room = FREE, now: datetime = T0,
         ) -> tuple[ClaimBook, list[Granted | Refused]]:  # fmt: skip
    decisions = []
    for ask in asks:
        book, decision = book.decide(ask, free=free, now=now, running=RUNNING)
        decisions.append(decision)
    return book, decisions


def _codes(decisions: list[Granted | Refused]) -> list[str]:
    return ["granted" if isinstance(d, Granted) else d.code.value for d in decisions]


@pytest.mark.parametrize(
    ("asks", "rules", "expected"),
    [
        pytest.param([_ask()], ClaimRules(), ["granted"], id="one-vm-fits"),
        pytest.param([_ask(f"c{i}") for i in range(5)], ClaimRules(),
                     ["granted"] * 4 + ["no_room"], id="fifth-vm-finds-the-room-taken-by-claims"),
        pytest.param([_ask(f"c{i}") for i in range(4)],
                     ClaimRules(reserve=Room(memory_bytes=GIB)),
                     ["granted"] * 3 + ["no_room"], id="the-reserve-is-kept-free"),
        pytest.param([_ask(room=Room(memory_bytes=GIB, vcpus=9, disk_bytes=GIB))], ClaimRules(),
                     ["no_room"], id="any-one-resource-short-refuses"),
        pytest.param([_ask(room=FREE)], ClaimRules(), ["granted"], id="exactly-the-free-room-fits"),
        pytest.param([_ask("c1"), _ask("c1")], ClaimRules(), ["granted", "granted"],
                     id="a-retry-is-granted-again"),
        pytest.param([_ask("c1"), _ask("c1", requester="host.b")], ClaimRules(),
                     ["granted", "claim_id_taken"], id="another-requesters-id-is-refused"),
        pytest.param([_ask("c1"), _ask("c1", room=Room(memory_bytes=GIB))], ClaimRules(),
                     ["granted", "claim_changed"], id="same-id-other-room-is-refused"),
        pytest.param([_ask("c1"), _ask("c1", vm_uuids=("vm-2",))], ClaimRules(),
                     ["granted", "claim_changed"], id="same-id-other-vms-is-refused"),
        pytest.param([_ask(f"c{i}", room=Room()) for i in range(3)], ClaimRules(max_claims_per_requester=2),
                     ["granted", "granted", "too_many_claims"], id="claims-per-requester-are-bounded"),
        pytest.param([_ask("c1", room=Room()), _ask("c2", requester="host.b", room=Room())],
                     ClaimRules(max_claims_per_requester=1), ["granted", "granted"],
                     id="the-bound-is-per-requester"),
        pytest.param([_ask("c1", function="web")], ClaimRules(), ["function_taken"],
                     id="a-function-the-host-runs-is-refused"),
        pytest.param([_ask("c1", function="db"), _ask("c2", requester="host.b", function="db"),
                      _ask("c3", requester="host.b", function="cache"), _ask("c4")], ClaimRules(),
                     ["granted", "function_taken", "granted", "granted"],
                     id="a-function-another-claim-holds-is-refused-others-fit"),
        pytest.param([_ask("c1", function="db"), _ask("c1", function="cache")], ClaimRules(),
                     ["granted", "claim_changed"], id="same-id-other-function-is-refused"),
    ],
)
def test_claims_are_decided_against_the_room_left(
    asks: list[ClaimAsk], rules: ClaimRules, expected: list[str]
) -> None:
    _book, decisions = _run(ClaimBook(rules=rules), *asks)
    assert _codes(decisions) == expected


def test_a_retried_claim_is_booked_once_and_its_expiry_renewed() -> None:
    book, [first] = _run(ClaimBook(), _ask(ttl_seconds=600))
    later = T0 + timedelta(seconds=500)
    book, [again] = _run(book, _ask(ttl_seconds=600), now=later)
    assert isinstance(first, Granted) and isinstance(again, Granted)
    assert not first.renewed and again.renewed
    assert again.claim.expires_at == later + timedelta(seconds=600)
    assert book.held(later) == VM  # not twice
    assert book.live(T0 + timedelta(seconds=700)) == (again.claim,)  # past the first expiry: still held


def test_a_grant_says_what_is_left_and_a_refusal_what_was_left() -> None:
    _book, [granted, *_, refused] = _run(ClaimBook(), *(_ask(f"c{i}") for i in range(5)))
    assert isinstance(granted, Granted) and granted.available == FREE - VM
    assert isinstance(refused, Refused) and refused.available == FREE - VM - VM - VM - VM
    assert "c4" in refused.detail


def test_the_ttl_is_bounded_by_the_destination() -> None:
    _book, [decision] = _run(ClaimBook(rules=ClaimRules(max_ttl_seconds=3600)), _ask(ttl_seconds=86_400))
    assert isinstance(decision, Granted) and decision.claim.expires_at == T0 + timedelta(hours=1)


def test_an_expired_claim_frees_its_room_and_is_reported_once() -> None:
    book, _ = _run(ClaimBook(), *(_ask(f"c{i}", ttl_seconds=60) for i in range(4)))
    assert book.available(FREE, T0 + timedelta(seconds=59)) == FREE - VM - VM - VM - VM
    at_expiry = T0 + timedelta(seconds=60)
    assert book.held(at_expiry) == Room()
    book, gone = book.expire(at_expiry)
    assert sorted(c.claim_id for c in gone) == ["c0", "c1", "c2", "c3"]
    assert book.expire(at_expiry) == (book, ())
    _book, [decision] = _run(book, _ask("c9"), now=at_expiry)
    assert isinstance(decision, Granted)


def test_an_expired_claims_id_is_decided_afresh() -> None:
    book, _ = _run(ClaimBook(), _ask("c1", ttl_seconds=60))
    later = T0 + timedelta(seconds=61)
    _book, [theirs] = _run(book, _ask("c1", requester="host.b"), now=later)
    assert isinstance(theirs, Granted) and not theirs.renewed


@pytest.mark.parametrize(
    ("claim_id", "requester", "released"),
    [
        pytest.param("c1", "host.a", True, id="its-requester-releases-it"),
        pytest.param("c1", "host.b", False, id="another-requester-cannot"),
        pytest.param("c2", "host.a", False, id="an-unknown-id-releases-nothing"),
    ],
)
def test_a_claim_is_released_only_by_its_requester(claim_id: str, requester: str, released: bool) -> None:
    book, _ = _run(ClaimBook(), _ask("c1"))
    after, claim = book.release(claim_id, requester=requester)
    assert (claim is not None) is released
    assert after.held(T0) == (Room() if released else VM)


def test_a_release_is_idempotent_and_frees_the_room_for_the_next() -> None:
    book, _ = _run(ClaimBook(), *(_ask(f"c{i}") for i in range(4)))
    book, first = book.release("c0", requester="host.a")
    book, second = book.release("c0", requester="host.a")
    assert isinstance(first, Claim) and second is None
    _book, [decision] = _run(book, _ask("c9", requester="host.b"))
    assert isinstance(decision, Granted)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _ask(room=Room(memory_bytes=-1)), id="negative-room"),
        pytest.param(lambda: _ask(ttl_seconds=0), id="no-ttl"),
        pytest.param(lambda: _ask(claim_id=""), id="no-id"),
        pytest.param(lambda: _ask(requester=""), id="no-requester"),
        pytest.param(lambda: ClaimRules(reserve=Room(vcpus=-1)), id="negative-reserve"),
        pytest.param(lambda: ClaimBook().held(datetime(2025, 3, 1)), id="naive-time"),
    ],
)
def test_nonsense_is_refused_loudly(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


@dataclass(frozen=True)
class _Claim:
    requester: str
    claim_id: str
    room: Room
    ttl_seconds: int
    function: str | None


@dataclass(frozen=True)
class _Release:
    requester: str
    claim_id: str


@dataclass(frozen=True)
class _Wait:
    seconds: int


_REQUESTERS = st.sampled_from(["host.a", "host.b", "host.c"])
_IDS = st.sampled_from([f"c{i}" for i in range(6)])
_ROOMS = st.builds(Room, memory_bytes=st.integers(0, 8 * GIB), vcpus=st.integers(0, 4),
                   disk_bytes=st.integers(0, 40 * GIB))
_STEPS = st.one_of(
    st.builds(_Claim, _REQUESTERS, _IDS, _ROOMS, st.integers(1, 120), st.sampled_from([None, "db", "web"])),
    st.builds(_Release, _REQUESTERS, _IDS),
    st.builds(_Wait, st.integers(0, 90)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_STEPS, max_size=60), reserve=_ROOMS)
def test_claims_never_exceed_the_free_room_less_the_reserve(steps: list[object], reserve: Room) -> None:
    book = ClaimBook(rules=ClaimRules(reserve=reserve))
    now = T0
    limit = FREE - reserve
    for step in steps:
        if isinstance(step, _Claim):
            ask = _ask(step.claim_id, step.requester, step.room, step.ttl_seconds, function=step.function)
            before = book.held(now)
            book, decision = book.decide(ask, free=FREE, now=now, running=RUNNING)
            if isinstance(decision, Granted) and decision.renewed:
                assert book.held(now) == before  # a retry books nothing twice
        elif isinstance(step, _Release):
            book, _ = book.release(step.claim_id, requester=step.requester)
        elif isinstance(step, _Wait):
            now += timedelta(seconds=step.seconds)
            if step.seconds % 2:  # sometimes purged, sometimes only no longer counted
                book, _ = book.expire(now)
        held = book.held(now)
        assert held.fits_in(limit), (held, limit)
        functions = [key for claim in book.live(now) for key in claim.functions]
        assert len(functions) == len(set(functions)) and RUNNING.isdisjoint(functions), "anti-affinity kept"
        owners = {claim.claim_id: claim.requester for claim in book.claims.values()}
        assert len(owners) == len(book.claims)  # one requester per claim id
