"""The digest responder's answers (pure: the file reading is a stub here; real files in the integration
tests), the wire messages' limits, and the request client with no broker."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.peers.cloud_slots import BrokerCloudCaps
from evacuator.peers.messages import (
    TAKEN_TYPE,
    DigestReply,
    DigestRequest,
    DigestTaken,
    PeerTrust,
    VolumeDigester,
    alive_queue,
    answer,
    request_routing_key,
    responder_queue,
)
from evacuator.peers.rpc import PeerClient
from evacuator.peers.rpc import _Awaited as Awaited  # the asker's bookkeeping, tested alone
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM
from evacuator.transfer.wire import ReceiveRequest
from notifiers.errors import BrokerUnavailable, InvalidName

DIGEST = "ab" * 32


def _request(**changes: str) -> DigestRequest:
    fields = {"host": "hv-02", "pool": "evacuator", "volume": "web-1.img",
              "algorithm": BLOCK_DIGEST_ALGORITHM}
    return DigestRequest(**(fields | changes))


TRUST = PeerTrust(own_user="host.hv-01", peer_users={"hv-02": "host.hv-02", "hv-03": "host.hv-03"})


def _digests(seen: list[tuple[str, str]]) -> VolumeDigester:
    def digest(pool: str, volume: str, requester: str) -> str | None:
        seen.append((pool, volume))
        assert requester == "host.hv-01"
        return {"web-1.img": DIGEST, "hidden.img": None}[volume]

    return digest


def test_a_request_for_this_hosts_volume_gets_its_digest() -> None:
    seen: list[tuple[str, str]] = []
    reply = answer(_request(), host="hv-02", requester="host.hv-01", digest_volume=_digests(seen))
    assert reply == DigestReply(host="hv-02", pool="evacuator", volume="web-1.img",
                                algorithm=BLOCK_DIGEST_ALGORITHM, digest=DIGEST)
    assert seen == [("evacuator", "web-1.img")]


@pytest.mark.parametrize(
    ("request_changes", "error"),
    [
        ({"host": "hv-03"}, "this is hv-02, not hv-03"),
        ({"algorithm": "md5"}, "unknown digest algorithm 'md5'"),
        ({"volume": "hidden.img"}, "does not see the volume's file"),
    ],
)
def test_a_request_this_host_cannot_answer_is_refused_with_the_reason(
    request_changes: dict[str, str], error: str
) -> None:
    seen: list[tuple[str, str]] = []
    reply = answer(_request(**request_changes), host="hv-02", requester="host.hv-01",
                   digest_volume=_digests(seen))
    assert reply.digest is None and reply.error is not None and error in reply.error
    # A request for another host or algorithm never touches the disk.
    assert len(seen) == (1 if "volume" in request_changes else 0)


def test_a_failing_read_becomes_the_replys_error() -> None:
    def failing(_pool: str, _volume: str, _requester: str) -> str | None:
        raise HypervisorError("pool other is not the evacuator's pool on hv-02")

    reply = answer(_request(), host="hv-02", requester="host.hv-01", digest_volume=failing)
    assert reply.digest is None and reply.error == "pool other is not the evacuator's pool on hv-02"


@pytest.mark.parametrize(
    "changes",
    [{"volume": "../etc/shadow"}, {"pool": ""}, {"host": "hv 02"}, {"volume": "x" * 300}],
)
def test_requests_naming_odd_things_are_invalid(changes: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        _request(**changes)


def test_a_reply_carries_a_sha256_hex_digest_or_none() -> None:
    with pytest.raises(ValidationError):
        DigestReply(host="h", pool="p", volume="v", algorithm=BLOCK_DIGEST_ALGORITHM, digest="not-hex")


def test_each_host_has_its_own_routing_key_and_queue() -> None:
    assert request_routing_key("hv-02") == "digest.hv-02"
    assert responder_queue("evacuator.peers", "hv-02") == "evacuator.peers.digest.hv-02"


def _no_broker() -> object:
    raise BrokerUnavailable("cannot connect to amqp://evacuator:***@mq:5672/")


def test_with_the_broker_down_the_client_answers_none_so_the_mover_reads_back() -> None:
    client = PeerClient(_no_broker, trust=TRUST, exchange="evacuator.peers", timeout_base_seconds=60,
                        min_bytes_per_second=10 << 20)
    with capture_logs() as logs:
        digest = client.digest(host="hv-02", pool="evacuator", volume="web-1.img", allocation_bytes=1 << 30)
    assert digest is None
    assert [e["reason"] for e in logs if e["event"] == "peer_digest_unavailable"] == [
        "cannot connect to amqp://evacuator:***@mq:5672/"]


def test_with_the_broker_down_no_ticket_comes_and_the_reason_says_why() -> None:
    client = PeerClient(_no_broker, trust=TRUST, exchange="evacuator.peers", timeout_base_seconds=60,
                        min_bytes_per_second=10 << 20)
    ticket = client.ticket(ReceiveRequest(host="hv-02", pool="evacuator", volume="web-1.img"),
                           timeout_seconds=10)
    assert ticket == "cannot connect to amqp://evacuator:***@mq:5672/"


def test_a_host_that_is_no_peer_is_not_asked_at_all() -> None:
    def never(*_: object) -> object:
        raise AssertionError("no connection for a host no user is known for")

    client = PeerClient(never, trust=TRUST, exchange="evacuator.peers", timeout_base_seconds=60,
                        min_bytes_per_second=10 << 20)
    assert client.digest(host="hv-09", pool="evacuator", volume="web-1.img", allocation_bytes=1) is None
    request = ReceiveRequest(host="hv-09", pool="evacuator", volume="web-1.img")
    ticket = client.ticket(request, timeout_seconds=1)
    assert isinstance(ticket, str) and "not a peer" in ticket


def test_peers_are_known_by_their_broker_users() -> None:
    assert TRUST.user_of("hv-02") == "host.hv-02" and TRUST.user_of("hv-09") is None
    assert TRUST.is_peer("host.hv-03") and not TRUST.is_peer("host.hv-01")  # itself: not a peer of itself
    assert not TRUST.is_peer(None) and not TRUST.is_peer("acme") and not TRUST.is_peer("guest")


def test_with_the_broker_down_a_cloud_wide_slot_is_not_waited_for() -> None:
    caps = BrokerCloudCaps(_no_broker, prefix="evacuator.peers", total=1, incoming_per_host=1)
    with capture_logs() as logs, caps.hold(destination="hv-02", vm_uuid="vm-1"):
        pass
    assert [e["event"] for e in logs] == ["cluster_slot_unavailable"] * 2  # the destination's, the total's


@pytest.mark.parametrize("incarnation", ["", "ABCDEF0123456789", "0123", "g" * 32, "a" * 33, "../x" * 5])
def test_a_taken_notice_names_a_connection_by_hex_only(incarnation: str) -> None:
    # It becomes part of a queue name the asker looks up: nothing but 16-32 lowercase hex digits.
    with pytest.raises(ValidationError):
        DigestTaken(incarnation=incarnation)


def test_each_connection_of_a_daemon_has_its_own_alive_queue() -> None:
    assert alive_queue("evacuator.peers", "hv-02", "0123456789abcdef") == \
        "evacuator.peers.alive.hv-02.0123456789abcdef"  # fmt: skip
    assert DigestTaken(incarnation="0123456789abcdef").incarnation == "0123456789abcdef"
    with pytest.raises(InvalidName):
        alive_queue("evacuator.peers", "hv 02", "0123456789abcdef")


class _Properties:
    def __init__(
        self, correlation_id: str, kind: str | None = None, user_id: str | None = "host.hv-02"
    ) -> None:
        self.correlation_id = correlation_id
        self.type = kind
        self.user_id = user_id


def test_an_asker_watches_the_connection_that_took_its_request_once_it_is_named() -> None:
    awaited = Awaited(_request(), correlation_id="c1", from_user="host.hv-02")
    assert awaited.watched_queue("ex") == "ex.digest.hv-02"
    awaited.on_reply(None, None, _Properties("c1", TAKEN_TYPE), b'{"incarnation": "../../etc"}')
    awaited.on_reply(None, None, _Properties("other", TAKEN_TYPE), b'{"incarnation": "' + b"f" * 32 + b'"}')
    assert awaited.watched_queue("ex") == "ex.digest.hv-02"  # garbled, or for another request: ignored
    awaited.on_reply(None, None, _Properties("c1", TAKEN_TYPE), b'{"incarnation": "' + b"a" * 32 + b'"}')
    assert awaited.watched_queue("ex") == "ex.alive.hv-02." + "a" * 32
    assert awaited.reply is None
    awaited.on_reply(None, None, _Properties("other"), b"not mine")
    awaited.on_reply(None, None, _Properties("c1"), b"first")
    awaited.on_reply(None, None, _Properties("c1"), b"second")
    assert awaited.reply == b"first"


@pytest.mark.parametrize("user_id", ["host.hv-03", "acme", None, "guest"])
def test_an_asker_believes_only_the_user_of_the_host_it_asked(user_id: str | None) -> None:
    awaited = Awaited(_request(), correlation_id="c1", from_user="host.hv-02")
    with capture_logs() as logs:
        taken = b'{"incarnation": "' + b"b" * 32 + b'"}'
        awaited.on_reply(None, None, _Properties("c1", TAKEN_TYPE, user_id), taken)
        awaited.on_reply(None, None, _Properties("c1", None, user_id), b"forged digest or ticket")
    assert awaited.reply is None and awaited.watched_queue("ex") == "ex.digest.hv-02"
    assert [e["event"] for e in logs] == ["peer_reply_ignored"] * 2
    awaited.on_reply(None, None, _Properties("c1"), b"the real one")
    assert awaited.reply == b"the real one"
