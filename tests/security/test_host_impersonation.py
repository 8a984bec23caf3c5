"""Attacks: one host passing for another, or reading what is another's (issue 18), on the real broker.

Before: every daemon was the same broker user (guest in the lab, one shared service user in production) with
every permission in the tenants' vhost. Any host could bind a queue to another host's digest requests (and
answer them), publish a reply its asker believed, ask any daemon for the digest of any volume, publish
notices in another host's name and read another host's tenant replies. Now each host is its own user
(`evacuator host add`, tagged evacuator-host), confined by permissions in the tenants' vhost and in a peers
vhost of its own; every message between daemons carries the sender's broker-checked `user_id`, a daemon
answers only its peers' users, an asker believes a reply only from the user of the host it asked, and a
daemon digests only a volume the asking host itself wrote.

Each test runs the attacker's moves as a real provisioned host user; the control runs the same moves as an
unconfined user (the lab's guest, which every host was before) and shows they were possible.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pika.exceptions
import pytest
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.peers.host_state import state_routing_key
from evacuator.peers.host_view import HostStateSubscriber, HostView
from evacuator.peers.messages import declare_exchange, request_routing_key, responder_queue
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import PeerClient
from evacuator.peers.state_publisher import HostStatePublisher, HostStatus, Switches, build_state
from evacuator.placement.model import Verdict
from evacuator.transfer.wire import ReceiveRequest, ReceiveTicket
from tests.fakes.room import FakeRoomReader
from tests.fixtures.broker import LabTenant
from tests.security.cloud import Cloud, Host, refused

pytestmark = pytest.mark.integration

MIB = 1 << 20
GENUINE = "ab" * 32
FORGED = "cd" * 32
POOL = "evacuator"


def _bind_a_queue_to(key: str, exchange: str) -> Callable[[Any], object]:
    def bind(channel: Any) -> None:
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)

    return bind


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [event for event in logs if event["event"] == name]


def test_a_host_can_neither_bind_nor_take_another_hosts_requests(cloud: Cloud) -> None:
    exchange = cloud.a.settings.peers_exchange
    connection = cloud.a.connect("setup")()
    declare_exchange(connection.channel(), exchange)
    connection.close()
    stealing: dict[str, Callable[[Any], object]] = {
        "bind digest.<a>": _bind_a_queue_to(request_routing_key(cloud.a.name), exchange),
        "bind every request": _bind_a_queue_to("digest.*", exchange),
        "bind everything": _bind_a_queue_to("#", exchange),
        "declare a's request queue": lambda channel: channel.queue_declare(
            queue=responder_queue(exchange, cloud.a.name), exclusive=True),
    }  # fmt: skip
    as_mallory = {move: refused(cloud.mallory.connect("steal"), action) for move, action in stealing.items()}
    assert as_mallory == dict.fromkeys(stealing, 403)

    def as_guest() -> Any:
        return pika.BlockingConnection(pika.URLParameters(cloud.admin_peers_url()))

    # The control: unconfined, as every daemon was, each move goes through.
    assert {move: refused(as_guest, action) for move, action in stealing.items()} == dict.fromkeys(stealing)
    # a itself may bind its own key (its daemon does exactly that).
    assert refused(cloud.a.connect("own"), stealing["bind digest.<a>"]) is None


def test_a_reply_forged_by_another_host_is_not_believed(cloud: Cloud) -> None:
    exchange = cloud.a.settings.peers_exchange
    # b's daemon, by hand: it hands the request's reply queue to mallory (who could also have learnt it from
    # a management listing), lets mallory answer first, then answers itself.
    b_connection = cloud.b.connect("daemon")()
    b_channel = b_connection.channel()
    declare_exchange(b_channel, exchange)
    queue = responder_queue(exchange, cloud.b.name)
    b_channel.queue_declare(queue=queue, exclusive=True)
    b_channel.queue_bind(queue=queue, exchange=exchange, routing_key=request_routing_key(cloud.b.name))
    client = _client(cloud, cloud.a, cloud.b, cloud.mallory)
    outcome: list[str | None] = []
    with capture_logs() as logs:
        asking = threading.Thread(target=lambda: outcome.append(
            client.digest(host=cloud.b.name, pool=POOL, volume="vm-1.img", allocation_bytes=0)))  # fmt: skip
        asking.start()
        method, properties, body = _next_message(b_connection, b_channel, queue)
        assert properties.user_id == cloud.a.user  # the broker vouches for who asked
        reply_to, correlation_id = properties.reply_to, properties.correlation_id
        forged = b'{"host": "%s", "pool": "%s", "volume": "vm-1.img", "algorithm": "%s", "digest": "%s"}' % (
            cloud.b.name.encode(),
            POOL.encode(),
            _algorithm(body),
            FORGED.encode(),
        )

        def forge(user_id: str | None) -> Callable[[Any], object]:
            return lambda channel: channel.basic_publish(
                exchange="",
                routing_key=reply_to,
                body=forged,
                properties=pika.BasicProperties(user_id=user_id, correlation_id=correlation_id),
            )

        # As b: the broker refuses a user_id that is not the connection's own.
        assert refused(cloud.mallory.connect("forge"), forge(cloud.b.user)) == 406
        # As itself, or as nobody: delivered, and not believed.
        assert refused(cloud.mallory.connect("forge"), forge(cloud.mallory.user)) is None
        assert refused(cloud.mallory.connect("forge"), forge(None)) is None
        time.sleep(0.5)  # the forgeries reach the asker first
        genuine = forged.replace(FORGED.encode(), GENUINE.encode())
        properties = pika.BasicProperties(user_id=cloud.b.user, correlation_id=correlation_id)
        b_channel.basic_publish(exchange="", routing_key=reply_to, body=genuine, properties=properties)
        b_channel.basic_ack(delivery_tag=method.delivery_tag)
        asking.join(30)
    b_connection.close()
    assert outcome == [GENUINE]
    ignored = _events(logs, "peer_reply_ignored")
    assert [event["user_id"] for event in ignored] == [cloud.mallory.user, None]


def _next_message(connection: Any, channel: Any, queue: str) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue=queue)
        if method is not None:
            return method, properties, body
        connection.process_data_events(time_limit=0.1)
    raise AssertionError("no request came")


def _algorithm(body: bytes) -> bytes:
    return str(json.loads(body)["algorithm"]).encode()


def _responder(cloud: Cloud, host: Host, *peers: Host, written_by: dict[str, str]) -> DigestResponder:
    def digest(pool: str, volume: str, requester: str) -> str | None:
        # What own_volume_digester does with the receiver's record: only the host that wrote the volume.
        if pool != POOL or written_by.get(volume) != requester:
            raise HypervisorError(f"no copy from {requester} into {pool}/{volume}")
        return GENUINE

    return DigestResponder(host.connect("digests"), trust=cloud.trust(host, *peers), host=host.name,
                           exchange=host.settings.peers_exchange, digest_volume=digest)  # fmt: skip


def _client(cloud: Cloud, host: Host, *peers: Host, timeout_base_seconds: float = 30) -> PeerClient:
    return PeerClient(host.connect("mover"), trust=cloud.trust(host, *peers),
                      exchange=host.settings.peers_exchange, timeout_base_seconds=timeout_base_seconds,
                      min_bytes_per_second=10 * MIB)  # fmt: skip


def test_a_host_that_is_no_peer_gets_nothing_but_a_refusal(cloud: Cloud) -> None:
    responder = _responder(cloud, cloud.b, cloud.a, written_by={"vm-1.img": cloud.a.user})
    responder.start()
    try:
        with capture_logs() as logs:
            stranger = _client(cloud, cloud.mallory, cloud.b)
            asked = stranger.digest(host=cloud.b.name, pool=POOL, volume="vm-1.img", allocation_bytes=0)
            assert asked is None
            wanted = ReceiveRequest(host=cloud.b.name, pool=POOL, volume="vm-1.img")
            ticket = stranger.ticket(wanted, timeout_seconds=30)
            peer = _client(cloud, cloud.a, cloud.b)
            assert peer.digest(host=cloud.b.name, pool=POOL, volume="vm-1.img", allocation_bytes=0) == GENUINE
    finally:
        responder.close()
    assert isinstance(ticket, ReceiveTicket) and ticket.token is None
    assert ticket.error is not None and f"{cloud.mallory.user} is not a peer" in ticket.error
    assert [event["user_id"] for event in _events(logs, "peer_request_refused")] == [cloud.mallory.user] * 2
    [unavailable] = _events(logs, "peer_digest_unavailable")
    assert f"{cloud.mallory.user} is not a peer of {cloud.b.name}" in str(unavailable["reason"])
    assert responder.answered == 1  # a's: mallory's request reached no digester


def test_a_peer_gets_no_digest_of_a_volume_another_host_wrote(cloud: Cloud) -> None:
    # mallory is b's peer here (it may send copies to b), but a wrote vm-1.img.
    responder = _responder(cloud, cloud.b, cloud.a, cloud.mallory, written_by={"vm-1.img": cloud.a.user})
    responder.start()
    try:
        with capture_logs() as logs:
            prying = _client(cloud, cloud.mallory, cloud.b)
            assert prying.digest(host=cloud.b.name, pool=POOL, volume="vm-1.img", allocation_bytes=0) is None
            owner = _client(cloud, cloud.a, cloud.b)
            assert (
                owner.digest(host=cloud.b.name, pool=POOL, volume="vm-1.img", allocation_bytes=0) == GENUINE
            )
    finally:
        responder.close()
    [unavailable] = _events(logs, "peer_digest_unavailable")
    assert f"no copy from {cloud.mallory.user}" in str(unavailable["reason"])


def test_a_host_can_neither_notify_as_another_nor_read_its_replies(cloud: Cloud) -> None:
    settings = cloud.mallory.settings
    for name in (settings.notices_exchange, settings.replies_exchange):
        connection = cloud.mallory.tenants_connection()
        connection.channel().exchange_declare(exchange=name, exchange_type="topic", durable=True)
        connection.close()
    notice_as_a = f"acme.{cloud.a.name}.evacuation_scheduled"
    moves: dict[str, Callable[[Any], object]] = {
        "notice as a": lambda channel: channel.basic_publish(
            exchange=settings.notices_exchange, routing_key=notice_as_a, body=b"{}"),
        "bind a's replies": _bind_a_queue_to(f"*.{cloud.a.name}", settings.replies_exchange),
        "bind every reply": _bind_a_queue_to("#", settings.replies_exchange),
        "reply as a tenant": lambda channel: channel.basic_publish(
            exchange=settings.replies_exchange, routing_key=f"acme.{cloud.a.name}", body=b"{}"),
    }  # fmt: skip
    assert {move: refused(cloud.mallory.tenants_connection, action) for move, action in moves.items()} == (
        dict.fromkeys(moves, 403)
    )

    def as_guest() -> Any:
        return pika.BlockingConnection(pika.URLParameters(cloud.admin_url))

    assert {move: refused(as_guest, action) for move, action in moves.items()} == dict.fromkeys(moves)
    # Its own notices go through.
    own = f"acme.{cloud.mallory.name}.evacuation_scheduled"
    assert refused(cloud.mallory.tenants_connection, lambda channel: channel.basic_publish(
        exchange=settings.notices_exchange, routing_key=own, body=b"{}")) is None  # fmt: skip


def test_a_tenant_cannot_enter_the_peers_vhost(cloud: Cloud, make_tenant: Callable[[str], LabTenant]) -> None:
    tenant = make_tenant("acme")
    parts = urlsplit(tenant.url)
    url = urlunsplit(parts._replace(path="/" + quote(cloud.peers_vhost, safe="")))
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.URLParameters(url))


def test_a_host_can_publish_only_its_own_state_and_a_forged_one_is_not_believed(cloud: Cloud) -> None:
    exchange = cloud.a.settings.peers_exchange

    def publish(key: str, body: bytes, user_id: str | None) -> Callable[[Any], object]:
        return lambda channel: channel.basic_publish(exchange=exchange, routing_key=key, body=body,
                                                     properties=pika.BasicProperties(user_id=user_id))

    def as_guest() -> Any:
        return pika.BlockingConnection(pika.URLParameters(cloud.admin_peers_url()))

    forged = build_state(host=cloud.b.name, incarnation="0" * 16, sequence=10**9, sent_at=datetime.now(UTC),
                         status=HostStatus(verdict=Verdict.FAILED), switches=Switches(), room=None)
    body = forged.model_dump_json().encode()
    mallory = cloud.mallory.connect("state")
    connection = mallory()
    declare_exchange(connection.channel(), exchange)
    connection.close()
    # The broker: its own key only (403 for another's or a wildcard), and only as itself (406).
    assert refused(mallory, publish(state_routing_key(cloud.b.name), body, cloud.mallory.user)) == 403
    assert refused(mallory, publish("state.*", body, cloud.mallory.user)) == 403
    assert refused(mallory, publish(state_routing_key(cloud.mallory.name), body, cloud.b.user)) == 406
    # The control: unconfined, as every daemon was, the forged key goes through.
    assert refused(as_guest, publish(state_routing_key(cloud.b.name), body, None)) is None

    clock = lambda: datetime.now(UTC)  # noqa: E731
    listener = HostStateSubscriber(cloud.a.connect("view"),
                                   trust=cloud.trust(cloud.a, cloud.b, cloud.mallory), host=cloud.a.name,
                                   exchange=exchange, view=HostView(stale_after_seconds=15),
                                   clock=clock)  # fmt: skip
    genuine = HostStatePublisher(cloud.b.connect("state"), own_user=cloud.b.user, host=cloud.b.name,
                                 exchange=exchange, room=FakeRoomReader(), interval_seconds=5,
                                 switches=Switches(), clock=clock)  # fmt: skip
    with capture_logs() as logs:
        listener.start()
        try:
            genuine.start()
            genuine.set_status(HostStatus(verdict=Verdict.HEALTHY))
            assert listener.view.wait_for([cloud.b.name], 10)
            # Under its own key and as itself (all the broker lets it do), naming b in the body: not believed.
            own_key = state_routing_key(cloud.mallory.name)
            assert refused(mallory, publish(own_key, body, cloud.mallory.user)) is None
            # As nobody, through the unconfined control: no user_id, not believed either.
            assert refused(as_guest, publish(state_routing_key(cloud.b.name), body, None)) is None
            deadline = time.monotonic() + 10
            while len(_events(logs, "host_state_refused")) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            genuine.close()
            listener.close()
    refusals = _events(logs, "host_state_refused")
    assert sorted(str(event["user_id"]) for event in refusals) == sorted([cloud.mallory.user, "None"])
    (b_state,) = [state for state in listener.view.hosts(datetime.now(UTC)) if state.name == cloud.b.name]
    assert (b_state.verdict, listener.view.heard()[0].incarnation) == (Verdict.HEALTHY, genuine.incarnation)
