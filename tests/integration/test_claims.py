"""Claims answered by the destination's daemon, on the real broker: two sources racing for one destination
with room for only part of their VMs never get more than its room; a release or an expiry frees room for
the next; a user that is no peer is refused; a daemon without claims, or none at all, is never a yes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from evacuator.peers.claim_desk import ClaimDesk, LiveRoom
from evacuator.peers.messages import PeerTrust
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import ClaimOutcome, ClaimStatus, PeerClient
from evacuator.placement.model import Room
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import lab_trust

pytestmark = pytest.mark.integration

GIB = 1 << 30
HOSTS = ("host-a", "host-b", "host-c")
VM = Room(memory_bytes=2 * GIB, vcpus=2, disk_bytes=20 * GIB)
# host-c's live free room: four such VMs fit (memory binds first), the two sources bring eight.
FREE = Room(memory_bytes=9 * GIB, vcpus=12, disk_bytes=200 * GIB)


def _client(settings: BrokerSettings, name: str, timeout_seconds: float = 10.0) -> PeerClient:
    return PeerClient(blocking_connection_factory(settings, connection_name=f"test-claims-{name}"),
                      trust=lab_trust(settings, HOSTS), exchange=settings.peers_exchange,
                      timeout_base_seconds=30, min_bytes_per_second=1 << 20,
                      claim_timeout_seconds=timeout_seconds)  # fmt: skip


@contextmanager
def _destination(settings: BrokerSettings, desk: ClaimDesk | None, *, trust: PeerTrust | None = None,
                 ) -> Iterator[None]:  # fmt: skip
    def no_digests(_pool: str, _volume: str, _requester: str) -> str | None:
        return None

    responder = DigestResponder(blocking_connection_factory(settings, connection_name="test-claims-host-c"),
                                trust=trust or lab_trust(settings, HOSTS), host="host-c",
                                exchange=settings.peers_exchange, digest_volume=no_digests, claims=desk)
    responder.start()
    try:
        yield
    finally:
        responder.close()


def _desk(free: Room = FREE, clock: Callable[[], datetime] | None = None) -> ClaimDesk:
    if clock is None:
        return ClaimDesk(host="host-c", free_room=lambda: LiveRoom(free=free))
    return ClaimDesk(host="host-c", free_room=lambda: LiveRoom(free=free), clock=clock)


class _Clock:
    """The destination's clock, moved on by the test: a TTL of seconds must not race the broker's latency."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _claim(client: PeerClient, room: Room = VM, *, vms: int = 1, ttl_seconds: int = 600,
           claim_id: str | None = None) -> ClaimOutcome:  # fmt: skip
    return client.claim("host-c", claim_id=claim_id or uuid.uuid4().hex, room=room,
                        vm_uuids=[str(uuid.uuid4()) for _ in range(vms)], ttl_seconds=ttl_seconds)


def _total(outcomes: Sequence[tuple[Room, ClaimOutcome]]) -> Room:
    total = Room()
    for room, outcome in outcomes:
        if outcome.granted:
            total = total + room
    return total


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [event for event in logs if event["event"] == name]


def test_two_sources_racing_for_one_destination_never_get_more_than_its_room(
    broker_settings: BrokerSettings,
) -> None:
    desk = _desk()
    # Source a brings a consistency group of two (one claim) and two single VMs; source b four singles.
    wanted = {"a": [VM + VM, VM, VM], "b": [VM, VM, VM, VM]}
    results: dict[str, list[tuple[Room, ClaimOutcome]]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def source(name: str) -> None:
        client = _client(broker_settings, name)
        start.wait(10)
        for room in wanted[name]:
            results[name].append((room, _claim(client, room, vms=room.vcpus // VM.vcpus)))

    with _destination(broker_settings, desk), capture_logs() as logs:
        threads = [threading.Thread(target=source, args=(name,)) for name in wanted]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        held = desk.held()
        both = results["a"] + results["b"]
        assert len(both) == 7 and all(o.status is not ClaimStatus.UNANSWERED for _room, o in both)
        granted = _total(both)
        assert granted.fits_in(FREE) and granted.memory_bytes == 8 * GIB  # four VMs' worth, not one more
        refused = [o for _room, o in both if o.status is ClaimStatus.REFUSED]
        assert refused and all(o.reason == "no_room" and o.available is not None for o in refused)
        assert {c.claim_id for c in held} == {o.claim_id for _room, o in both if o.granted}
        assert len(_events(logs, "claim_granted")) == len(both) - len(refused)

        # A source releases a claim (its move ended): the other's next choice fits.
        owner, (freed_room, freed) = next((name, pair) for name, pairs in results.items()
                                          for pair in pairs if pair[1].granted)  # fmt: skip
        other = "b" if owner == "a" else "a"
        assert _client(broker_settings, owner).release("host-c", freed.claim_id)
        assert not _client(broker_settings, owner).release("host-c", freed.claim_id)  # idempotent
        retry = _claim(_client(broker_settings, other), freed_room)
        assert retry.granted
        assert [e["claim_id"] for e in _events(logs, "claim_released")] == [freed.claim_id]


def test_an_expired_claim_frees_its_room_and_a_renewal_keeps_one(broker_settings: BrokerSettings) -> None:
    clock = _Clock()
    desk = _desk(clock=clock)
    client = _client(broker_settings, "a")
    with _destination(broker_settings, desk), capture_logs() as logs:
        group = [str(uuid.uuid4()) for _ in range(2)]
        lasting = client.claim("host-c", claim_id="long-copy", room=VM + VM, vm_uuids=group, ttl_seconds=1)
        # The same claim again while its long copy runs: renewed, booked once.
        renewed = client.claim("host-c", claim_id="long-copy", room=VM + VM, vm_uuids=group, ttl_seconds=600)
        brief = _claim(client, VM + VM, vms=2, ttl_seconds=1)  # a mover that died mid-copy
        full = _claim(_client(broker_settings, "b"))
        clock.now += timedelta(seconds=1)
        after = _claim(_client(broker_settings, "b"))
        held = desk.held()
    assert lasting.granted and brief.granted and brief.ttl_seconds == 1
    assert renewed.granted and renewed.ttl_seconds == 600 and renewed.available == FREE - VM - VM
    assert full.status is ClaimStatus.REFUSED and full.available == FREE - VM - VM - VM - VM
    assert after.granted
    assert [e["claim_id"] for e in _events(logs, "claim_expired")] == [brief.claim_id]
    assert {c.claim_id for c in held} == {lasting.claim_id, after.claim_id}


def test_a_retried_claim_is_booked_once(broker_settings: BrokerSettings) -> None:
    desk = _desk()
    client = _client(broker_settings, "a")
    vms = [str(uuid.uuid4())]
    with _destination(broker_settings, desk):
        outcomes = [client.claim("host-c", claim_id="retried-1", room=VM, vm_uuids=vms, ttl_seconds=600)
                    for _ in range(3)]  # fmt: skip
        held = desk.held()
    assert all(o.granted for o in outcomes)
    assert [o.available for o in outcomes] == [FREE - VM] * 3
    assert [c.claim_id for c in held] == ["retried-1"]


def test_a_claim_from_a_user_that_is_no_peer_is_refused(broker_settings: BrokerSettings) -> None:
    desk = _desk()
    lab_user = lab_trust(broker_settings).own_user
    # host-c's daemon knows only other users as its peers: the lab's user asking is none of them.
    strangers = PeerTrust(own_user=lab_user, peer_users={"host-a": "host.host-a", "host-b": "host.host-b"})
    with _destination(broker_settings, desk, trust=strangers), capture_logs() as logs:
        outcome = _claim(_client(broker_settings, "a"))
        held = desk.held()
    assert outcome.status is ClaimStatus.REFUSED and outcome.reason == "not_a_peer"
    assert held == () and not _events(logs, "claim_granted")
    assert [e["user_id"] for e in _events(logs, "peer_request_refused")] == [lab_user]


def test_a_daemon_without_claims_refuses_and_no_daemon_is_no_answer(broker_settings: BrokerSettings) -> None:
    client = _client(broker_settings, "a", timeout_seconds=60)
    with _destination(broker_settings, None):
        unwired = _claim(client)
    began = time.monotonic()
    nobody = _claim(client)
    assert unwired.status is ClaimStatus.REFUSED and unwired.reason == "claims_not_served"
    assert nobody.status is ClaimStatus.UNANSWERED and "listens" in str(nobody.reason)
    assert time.monotonic() - began < 10  # not the 60 s allowed: nobody listens, so nobody is waited for
