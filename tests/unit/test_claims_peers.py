"""Claims between daemons without a broker: the wire messages' bounds, the destination's claim desk (its
book under a lock, the live free room, the logs), and the asker and the responder talking through an
in-memory loopback that checks `user_id` as the broker does."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pika
import pika.exceptions
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.peers.claim_desk import ClaimDesk, LiveRoom
from evacuator.peers.messages import (
    TAKEN_TYPE,
    ClaimReply,
    ClaimRequest,
    PeerTrust,
    ReleaseRequest,
    WireRoom,
)
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import ClaimOutcome, ClaimStatus, PeerClient
from evacuator.peers.rpc import _Awaited as Awaited  # the asker's bookkeeping, tested alone
from evacuator.placement.claims import ClaimRules
from evacuator.placement.model import Room
from notifiers.errors import BrokerUnavailable

GIB = 1 << 30
UUIDS = ("0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7")
VM = Room(memory_bytes=4 * GIB, vcpus=2, disk_bytes=20 * GIB)
FREE = Room(memory_bytes=10 * GIB, vcpus=8, disk_bytes=100 * GIB)  # room for two such VMs
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _claim(claim_id: str = "c1", host: str = "hv-02", **changes: Any) -> ClaimRequest:
    fields: dict[str, Any] = {"host": host, "claim_id": claim_id, "vm_uuids": UUIDS[:1],
                              "memory_bytes": VM.memory_bytes, "vcpus": VM.vcpus,
                              "disk_bytes": VM.disk_bytes, "ttl_seconds": 600}
    return ClaimRequest(**(fields | changes))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"claim_id": "../x"}, id="id-with-a-slash"),
        pytest.param({"claim_id": "x" * 129}, id="id-too-long"),
        pytest.param({"vm_uuids": ()}, id="no-vm"),
        pytest.param({"vm_uuids": ("not-a-uuid",)}, id="not-a-uuid"),
        pytest.param({"vm_uuids": UUIDS[:1] * 257}, id="too-many-vms"),
        pytest.param({"memory_bytes": -1}, id="negative-memory"),
        pytest.param({"vcpus": 1 << 21}, id="absurd-vcpus"),
        pytest.param({"ttl_seconds": 0}, id="no-ttl"),
        pytest.param({"ttl_seconds": 86_401}, id="ttl-beyond-a-day"),
        pytest.param({"host": "hv 02"}, id="host-with-a-space"),
        pytest.param({"functions": (("acme", ""),)}, id="empty-function"),
        pytest.param({"functions": (("acme", "d b"),)}, id="function-with-a-space"),
        pytest.param({"functions": (("acme", "db"),) * 257}, id="too-many-functions"),
    ],
)
def test_claim_requests_out_of_bounds_are_invalid(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _claim(**changes)


def test_claim_messages_are_strict_about_types() -> None:
    body = _claim().model_dump_json().replace('"vcpus":2', '"vcpus":"2"')
    with pytest.raises(ValidationError):
        ClaimRequest.model_validate_json(body)
    with pytest.raises(ValidationError):  # a reason is a snake_case code, nothing more
        ClaimReply(host="hv-02", claim_id="c1", granted=False, reason="No Room!")
    assert ClaimRequest.model_validate_json(_claim().model_dump_json()) == _claim()
    with_function = _claim(functions=(("", "db"), ("acme", "web")))
    assert ClaimRequest.model_validate_json(with_function.model_dump_json()) == with_function


def test_wire_room_is_never_negative() -> None:
    over = Room(memory_bytes=-GIB, vcpus=3, disk_bytes=-1)
    assert WireRoom.of(over).room() == Room(memory_bytes=0, vcpus=3, disk_bytes=0)


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _desk(free: Callable[[], LiveRoom] = lambda: LiveRoom(free=FREE),
          clock: Callable[[], datetime] | None = None, **rules: Any) -> ClaimDesk:  # fmt: skip
    return ClaimDesk(host="hv-02", free_room=free, rules=ClaimRules(**rules), clock=clock or _Clock())


def test_the_desk_grants_within_its_room_and_says_what_is_left() -> None:
    desk = _desk()
    with capture_logs() as logs:
        first = desk.claim(_claim("c1"), "host.hv-01")
        second = desk.claim(_claim("c2", vm_uuids=UUIDS[1:]), "host.hv-03")
        third = desk.claim(_claim("c3"), "host.hv-03")
    assert first.granted and second.granted and first.ttl_seconds == 600
    assert first.available == WireRoom.of(FREE - VM)
    assert not third.granted and third.reason == "no_room"
    assert third.available == WireRoom.of(FREE - VM - VM)
    assert [e["event"] for e in logs] == ["claim_granted", "claim_granted", "claim_refused"]
    assert logs[0] | {"vm_uuids": list(UUIDS[:1]), "requester": "host.hv-01", "claim_id": "c1",
                      "memory_bytes": VM.memory_bytes, "renewed": False} == logs[0]  # fmt: skip
    assert [c.claim_id for c in desk.held()] == ["c1", "c2"]


def test_the_desk_bounds_the_ttl_and_a_renewal_books_nothing_twice() -> None:
    clock = _Clock()
    desk = _desk(clock=clock, max_ttl_seconds=300)
    assert desk.claim(_claim(ttl_seconds=3600), "host.hv-01").ttl_seconds == 300
    clock.now += timedelta(seconds=200)
    renewed = desk.claim(_claim(ttl_seconds=3600), "host.hv-01")
    assert renewed.granted and renewed.available == WireRoom.of(FREE - VM)
    clock.now += timedelta(seconds=200)  # past the first expiry, within the renewed one
    assert [c.claim_id for c in desk.held()] == ["c1"]


def test_claims_belong_to_their_requester() -> None:
    desk = _desk()
    desk.claim(_claim("c1"), "host.hv-01")
    with capture_logs() as logs:
        taken = desk.claim(_claim("c1"), "host.hv-03")
        not_theirs = desk.release(ReleaseRequest(host="hv-02", claim_id="c1"), "host.hv-03")
        released = desk.release(ReleaseRequest(host="hv-02", claim_id="c1"), "host.hv-01")
        again = desk.release(ReleaseRequest(host="hv-02", claim_id="c1"), "host.hv-01")
    assert not taken.granted and taken.reason == "claim_id_taken"
    assert (not_theirs.released, released.released, again.released) == (False, True, False)
    assert [e["event"] for e in logs] == ["claim_refused", "claim_release_unknown", "claim_released",
                                          "claim_release_unknown"]
    assert desk.held() == ()


def test_an_expired_claim_is_logged_and_frees_its_room() -> None:
    clock = _Clock()
    desk = _desk(clock=clock)
    desk.claim(_claim("c1", ttl_seconds=60), "host.hv-01")
    desk.claim(_claim("c2", ttl_seconds=60), "host.hv-01")
    assert not desk.claim(_claim("c3"), "host.hv-03").granted
    clock.now += timedelta(seconds=60)
    with capture_logs() as logs:
        late = desk.claim(_claim("c3"), "host.hv-03")
    assert late.granted
    expired = [e for e in logs if e["event"] == "claim_expired"]
    assert sorted(e["claim_id"] for e in expired) == ["c1", "c2"]
    assert all(e["requester"] == "host.hv-01" and e["log_level"] == "warning" for e in expired)


def test_the_desk_reads_the_live_room_for_every_claim_and_refuses_when_it_cannot() -> None:
    rooms = [FREE, Room(memory_bytes=GIB, vcpus=8, disk_bytes=100 * GIB)]

    def free() -> LiveRoom:
        if not rooms:
            raise HypervisorError("libvirt is unreachable")
        return LiveRoom(free=rooms.pop(0))

    desk = _desk(free=free)
    assert desk.claim(_claim("c1"), "host.hv-01").granted
    shrunk = desk.claim(_claim("c2"), "host.hv-01")  # a VM started here meanwhile: live room counts
    blind = desk.claim(_claim("c3", memory_bytes=0, vcpus=0, disk_bytes=0), "host.hv-01")
    assert not shrunk.granted and shrunk.reason == "no_room"
    assert not blind.granted and blind.reason == "room_unknown" and "unreachable" in str(blind.detail)


def test_the_desk_refuses_a_function_it_runs_or_expects_and_grants_others() -> None:
    """Anti-affinity where every claim is seen: a db replica running here, or claimed by another source,
    keeps a second one out (function_taken); another tenant's "db" and a VM with no function still fit."""
    desk = _desk(free=lambda: LiveRoom(free=FREE, functions=frozenset({("acme", "db")})))
    running = desk.claim(_claim("c1", functions=(("acme", "db"),)), "host.hv-01")
    assert not running.granted and running.reason == "function_taken" and "acme/db" in str(running.detail)
    assert desk.claim(_claim("c2", functions=(("globex", "db"),)), "host.hv-01").granted
    expected = desk.claim(_claim("c3", functions=(("globex", "db"),)), "host.hv-03")
    assert not expected.granted and expected.reason == "function_taken"
    assert desk.claim(_claim("c4"), "host.hv-03").granted
    assert desk.claim(_claim("c2", functions=(("globex", "db"),)), "host.hv-01").granted, "a renewal"
    desk.release(ReleaseRequest(host="hv-02", claim_id="c2"), "host.hv-01")
    assert desk.claim(_claim("c3", functions=(("globex", "db"),)), "host.hv-03").granted, "free once released"


def test_the_desk_answers_only_for_its_own_host() -> None:
    desk = _desk()
    assert desk.claim(_claim(host="hv-03"), "host.hv-01").reason == "wrong_host"
    assert desk.release(ReleaseRequest(host="hv-03", claim_id="c1"), "host.hv-01").reason == "wrong_host"


class _Loopback:
    """An in-memory broker between askers and one responder: a request published on the peers exchange
    reaches the responder's handler on the spot; its replies land in the asker's reply queue. As the broker
    does, it refuses a `user_id` that is not the publisher's; with no responder a request is unroutable."""

    def __init__(self) -> None:
        self.responder: DigestResponder | None = None
        self.responder_user = ""
        self.inbox: queue.Queue[tuple[Any, bytes]] = queue.Queue()
        self.requests: list[Any] = []

    def serve(self, responder: DigestResponder, *, user: str) -> None:
        self.responder, self.responder_user = responder, user

    def connect(self, user: str) -> Callable[[], Any]:
        return lambda: _AskerConnection(self, user)

    def deliver(self, properties: Any, body: bytes) -> None:
        self.requests.append(properties)
        assert self.responder is not None
        connection = SimpleNamespace(add_callback_threadsafe=lambda callback: callback())
        channel = SimpleNamespace(basic_ack=lambda **_: None, basic_publish=self._reply)
        self.responder._on_request(connection, channel, SimpleNamespace(delivery_tag=1), properties, body)

    def _reply(self, *, exchange: str, routing_key: str, body: bytes, properties: Any) -> None:
        assert exchange == "" and routing_key.startswith("amq.gen-")
        assert properties.user_id == self.responder_user  # the broker's check
        self.inbox.put((properties, body))


class _AskerConnection:
    def __init__(self, loop: _Loopback, user: str) -> None:
        self._loop = loop
        self._user = user
        self._consume: Any = None

    def channel(self) -> _AskerConnection:
        return self

    def confirm_delivery(self) -> None: ...

    def exchange_declare(self, **_: Any) -> None: ...

    def queue_declare(self, **_: Any) -> Any:
        return SimpleNamespace(method=SimpleNamespace(queue="amq.gen-asker", consumer_count=1))

    def basic_consume(self, *, on_message_callback: Any, **_: Any) -> None:
        self._consume = on_message_callback

    def basic_publish(self, *, body: bytes, properties: Any, **_: Any) -> None:
        assert properties.user_id == self._user  # the broker's check
        if self._loop.responder is None:
            raise pika.exceptions.UnroutableError([])
        threading.Thread(target=self._loop.deliver, args=(properties, body)).start()

    def process_data_events(self, *, time_limit: float) -> None:
        try:
            properties, body = self._loop.inbox.get(timeout=time_limit)
        except queue.Empty:
            return
        self._consume(None, None, properties, body)

    def close(self) -> None: ...


ASKER = PeerTrust(own_user="host.hv-01", peer_users={"hv-02": "host.hv-02"})
RESPONDER = PeerTrust(own_user="host.hv-02", peer_users={"hv-01": "host.hv-01"})


def _never(*_: object) -> str | None:
    raise AssertionError("no digest asked for")


def _pair(claims: ClaimDesk | None, *, responder_trust: PeerTrust = RESPONDER,
          timeout: float = 5.0) -> tuple[PeerClient, DigestResponder]:  # fmt: skip
    loop = _Loopback()
    responder = DigestResponder(lambda: None, trust=responder_trust, host="hv-02", exchange="ex",
                                digest_volume=_never, claims=claims)
    loop.serve(responder, user=responder_trust.own_user)
    client = PeerClient(loop.connect(ASKER.own_user), trust=ASKER, exchange="ex", timeout_base_seconds=60,
                        min_bytes_per_second=1, claim_timeout_seconds=timeout)
    return client, responder


def test_a_claim_granted_then_refused_then_granted_after_a_release() -> None:
    client, responder = _pair(_desk())
    try:
        with capture_logs() as logs:
            outcomes = [client.claim("hv-02", claim_id=f"c{i}", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=600)
                        for i in range(3)]  # fmt: skip
            released = client.release("hv-02", "c0")
            after = client.claim("hv-02", claim_id="c2", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=600)
    finally:
        responder.close()
    assert [o.status for o in outcomes] == [ClaimStatus.GRANTED, ClaimStatus.GRANTED, ClaimStatus.REFUSED]
    assert outcomes[0] == ClaimOutcome(status=ClaimStatus.GRANTED, host="hv-02", claim_id="c0",
                                       available=FREE - VM, ttl_seconds=600)
    assert outcomes[2].reason == "no_room" and outcomes[2].available == FREE - VM - VM
    assert released and after.granted
    assert [e["event"] for e in logs if e["event"].startswith("peer_claim")] == [
        "peer_claim_granted", "peer_claim_granted", "peer_claim_refused", "peer_claim_released",
        "peer_claim_granted"]


def test_a_daemon_without_claims_says_so_and_it_is_a_refusal() -> None:
    client, responder = _pair(None)
    try:
        outcome = client.claim("hv-02", claim_id="c1", room=VM, vm_uuids=UUIDS, ttl_seconds=60)
        released = client.release("hv-02", "c1")
    finally:
        responder.close()
    assert outcome.status is ClaimStatus.REFUSED and outcome.reason == "claims_not_served"
    assert outcome.available is None and not released


def test_a_claim_from_no_peer_is_refused_and_never_booked() -> None:
    desk = _desk()
    stranger = PeerTrust(own_user="host.hv-02", peer_users={"hv-07": "host.hv-07"})
    client, responder = _pair(desk, responder_trust=stranger)
    try:
        with capture_logs() as logs:
            outcome = client.claim("hv-02", claim_id="c1", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=60)
    finally:
        responder.close()
    assert outcome.status is ClaimStatus.REFUSED and outcome.reason == "not_a_peer"
    assert desk.held() == ()
    assert [e["user_id"] for e in logs if e["event"] == "peer_request_refused"] == ["host.hv-01"]


def test_an_answer_from_another_user_than_the_hosts_is_no_answer() -> None:
    # Another daemon (or anyone) answering into the asker's queue: believed by nobody, so unanswered.
    impostor = PeerTrust(own_user="host.hv-03", peer_users={"hv-01": "host.hv-01"})
    client, responder = _pair(_desk(), responder_trust=impostor, timeout=0.5)
    try:
        with capture_logs() as logs:
            outcome = client.claim("hv-02", claim_id="c1", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=60)
    finally:
        responder.close()
    assert outcome.status is ClaimStatus.UNANSWERED and "no answer" in str(outcome.reason)
    assert [e["event"] for e in logs if e["event"] == "peer_reply_ignored"] == ["peer_reply_ignored"]


def test_a_claim_travels_typed_with_an_expiry_and_the_askers_user() -> None:
    loop = _Loopback()
    responder = DigestResponder(lambda: None, trust=RESPONDER, host="hv-02", exchange="ex",
                                digest_volume=_never, claims=_desk())
    loop.serve(responder, user="host.hv-02")
    client = PeerClient(loop.connect("host.hv-01"), trust=ASKER, exchange="ex", timeout_base_seconds=60,
                        min_bytes_per_second=1, claim_timeout_seconds=7)
    try:
        client.claim("hv-02", claim_id="c1", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=60)
        client.release("hv-02", "c1")
    finally:
        responder.close()
    assert [(p.type, p.user_id, p.expiration) for p in loop.requests] == [
        ("claim", "host.hv-01", "7000"), ("release", "host.hv-01", "7000")]


def _no_broker() -> object:
    raise BrokerUnavailable("cannot connect to amqp://evacuator:***@mq:5672/")


def _offline_client() -> PeerClient:
    return PeerClient(_no_broker, trust=ASKER, exchange="ex", timeout_base_seconds=60, min_bytes_per_second=1)


def test_with_the_broker_down_a_claim_is_unanswered_and_a_release_does_not_raise() -> None:
    client = _offline_client()
    with capture_logs() as logs:
        outcome = client.claim("hv-02", claim_id="c1", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=60)
        released = client.release("hv-02", "c1")
    assert outcome == ClaimOutcome(status=ClaimStatus.UNANSWERED, host="hv-02", claim_id="c1",
                                   reason="cannot connect to amqp://evacuator:***@mq:5672/")
    assert not outcome.granted and not released
    assert [e["event"] for e in logs] == ["peer_claim_unanswered", "peer_claim_release_unanswered"]


def test_with_no_daemon_listening_a_claim_is_unanswered_at_once() -> None:
    loop = _Loopback()  # nobody serves hv-02: the request is unroutable
    client = PeerClient(loop.connect("host.hv-01"), trust=ASKER, exchange="ex", timeout_base_seconds=60,
                        min_bytes_per_second=1, claim_timeout_seconds=60)
    outcome = client.claim("hv-02", claim_id="c1", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=60)
    assert outcome.status is ClaimStatus.UNANSWERED and "no daemon of hv-02 listens" in str(outcome.reason)


def test_a_host_that_is_no_peer_is_not_asked_for_room() -> None:
    client = _offline_client()
    outcome = client.claim("hv-09", claim_id="c1", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=60)
    assert outcome.status is ClaimStatus.UNANSWERED and "not a peer" in str(outcome.reason)


def test_a_claim_no_daemon_could_take_is_the_callers_bug() -> None:
    client = _offline_client()
    with pytest.raises(ValidationError):
        client.claim("hv-02", claim_id="no/slashes", room=VM, vm_uuids=UUIDS[:1], ttl_seconds=60)


def test_a_taken_notice_for_a_claim_is_logged_by_its_claim_id() -> None:
    awaited = Awaited(_claim(), correlation_id="c1", from_user="host.hv-02")
    properties = pika.BasicProperties(correlation_id="c1", type=TAKEN_TYPE, user_id="host.hv-02")
    with capture_logs() as logs:
        awaited.on_reply(None, None, properties, b'{"incarnation": "' + b"a" * 32 + b'"}')
    assert [(e["event"], e["claim_id"]) for e in logs] == [("peer_digest_taken", "c1")]
