"""This host's daemon answering its peers' requests: digests (why: rpc.py; the wire: messages.py), tickets
for its data channel (evacuator/transfer/wire.py) and claims on its room (claim_desk.py).

It serves only its peers: a request whose broker-checked `user_id` is no peer's user is refused at once with
nothing but that (`peer_request_refused`), and each reply carries this daemon's own user, which the asker
checks. What a peer can make it do is bounded too: it digests only a volume that peer's copy just wrote
through the data channel (own_host.py's digester), replies only into a server-named queue (`amq.gen-...`,
never a tenant's), drops requests that carry no expiry, and keeps at most `MAX_WAITING_REQUESTS` waiting (the
broker refuses more, and the asker falls back at once).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import pika
import pika.exceptions
import structlog
from pydantic import BaseModel, ValidationError

from evacuator.peers.claim_desk import BUSY, CLAIM_FAILED, CLAIMS_NOT_SERVED, NOT_A_PEER, ClaimDesk
from evacuator.peers.messages import (
    REQUEST_TYPES,
    TAKEN_HEADER,
    TAKEN_TYPE,
    ClaimRequest,
    DigestReply,
    DigestRequest,
    DigestTaken,
    PeerRequest,
    PeerTrust,
    ReleaseRequest,
    VolumeDigester,
    alive_queue,
    answer,
    declare_exchange,
    refusal,
    request_routing_key,
    responder_queue,
)
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM
from evacuator.transfer.wire import ReceiveRequest, ReceiveTicket
from notifiers.connection import ACCESS_REFUSED, CONNECTION_ERRORS, ConnectionFactory
from notifiers.consumer_thread import ConsumerThread
from notifiers.topology import check_word

log = structlog.get_logger(__name__)

MAX_WAITING_REQUESTS = 64
_REPLY_QUEUE_PREFIX = "amq.gen-"  # queues the broker named: an asker's own, never a tenant's


class _Lane:
    """One kind of request answered on a worker thread of its own, so it never waits behind another kind
    (a copy's ticket or a claim behind a long digest), with at most MAX_WAITING_REQUESTS waiting."""

    def __init__(self, name: str) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.waiting = 0  # only the connection's thread touches it


class DigestResponder:
    """Answers digest requests for this host's volumes on its own thread and connection; the digests are
    computed by `workers` threads, so a long one never stalls the connection's heartbeats. Tickets and claims
    (with `issue_ticket` and `claims`; without, each is refused, saying so) have a worker thread each."""

    def __init__(
        self, connect: ConnectionFactory, *, trust: PeerTrust, host: str, exchange: str,
        digest_volume: VolumeDigester, workers: int = 2,
        issue_ticket: Callable[[ReceiveRequest, str], ReceiveTicket] | None = None,
        claims: ClaimDesk | None = None,
    ) -> None:
        self._issue_ticket = issue_ticket
        self._claims = claims
        self._trust = trust
        self._connect = connect
        self._host = check_word("host", host)
        self._exchange = exchange
        self._digest_volume = digest_volume
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evacuator-digest")
        self._tickets = _Lane("evacuator-ticket")
        self._claim_lane = _Lane("evacuator-claim")  # one thread: claims are decided one at a time anyway
        self._in_flight = 0  # taken and not yet answered; only the connection's thread touches it
        self._incarnation = ""  # names the current connection to askers (see messages.py: "taken")
        self._loop = ConsumerThread(open_connection=self._open, role="digests", host=self._host)
        # How many copies this daemon vouched for: the tests and the bench show verification happened here.
        self.answered = 0

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Consume; raise BrokerUnavailable if the first connection fails."""
        self._loop.start(timeout_seconds=timeout_seconds)

    def close(self, *, timeout_seconds: float = 30.0) -> None:
        self._loop.close(timeout_seconds=timeout_seconds)
        for worker in (self._workers, self._tickets.worker, self._claim_lane.worker):
            worker.shutdown(wait=False, cancel_futures=True)

    def _open(self) -> tuple[Any, Any]:
        connection = self._connect()
        self._in_flight = 0  # what the lost connection had taken is lost with it (its askers notice)
        self._tickets.waiting = self._claim_lane.waiting = 0
        try:
            self._incarnation = self._declare_alive(connection)
            channel = connection.channel()
            declare_exchange(channel, self._exchange)
            # Exclusive: it lives and dies with this connection, so nobody waits on a daemon that is gone.
            queue = responder_queue(self._exchange, self._host)
            channel.queue_declare(queue=queue, exclusive=True, arguments={
                "x-max-length": MAX_WAITING_REQUESTS, "x-overflow": "reject-publish"})
            channel.queue_bind(queue=queue, exchange=self._exchange,
                               routing_key=request_routing_key(self._host))
            channel.basic_consume(queue=queue, on_message_callback=partial(self._on_request, connection))
        except BaseException:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
            raise
        log.info("broker_connected", role="digests", host=self._host)
        return connection, channel

    def _declare_alive(self, connection: Any) -> str:
        """This connection's own queue, named in the "taken" notices: it lives exactly as long as the
        connection, which holds the requests it took, and never holds a message (anyone may publish to a
        queue by its name). Without the broker's leave to create it (a user allowed only the older names),
        the daemon still answers, without notices: askers then watch the host's request queue instead."""
        incarnation = uuid.uuid4().hex
        channel = connection.channel()
        try:
            channel.queue_declare(queue=alive_queue(self._exchange, self._host, incarnation), exclusive=True,
                                  arguments={"x-max-length": 0})
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != ACCESS_REFUSED:
                raise
            log.warning("digest_taken_notices_off", host=self._host, error=str(exc.reply_text))
            return ""
        with contextlib.suppress(*CONNECTION_ERRORS):
            channel.close()
        return incarnation

    def _reply(self, channel: Any, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None:
        channel.basic_publish(
            exchange="", routing_key=reply_to, body=reply.model_dump_json().encode(),
            properties=pika.BasicProperties(
                user_id=self._trust.own_user,  # the asker believes only the user of the host it asked
                correlation_id=correlation_id, content_type="application/json",
                type=TAKEN_TYPE if isinstance(reply, DigestTaken) else None,
            ),
        )

    def _answer(self, request: DigestRequest, requester: str) -> DigestReply:
        try:
            return answer(request, host=self._host, requester=requester, digest_volume=self._digest_volume)
        except Exception as exc:  # an unreadable file, say: the asker reads back instead; the daemon goes on
            log.error("digest_failed", host=self._host, pool=request.pool, volume=request.volume,
                      exc_info=True)
            return DigestReply(host=self._host, pool=request.pool, volume=request.volume,
                               algorithm=BLOCK_DIGEST_ALGORITHM, error=f"digest failed: {exc!r}"[:1000])

    def _on_request(self, connection: Any, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        reply_to = properties.reply_to or ""
        requester = properties.user_id  # the broker refuses a message whose user_id is not its publisher's
        try:
            if not reply_to.startswith(_REPLY_QUEUE_PREFIX) or not properties.expiration:
                raise ValueError("a request needs a server-named reply queue and an expiry")
            kind = REQUEST_TYPES.get(properties.type, DigestRequest)
            wanted: PeerRequest = kind.model_validate_json(body)
        except (ValueError, ValidationError) as exc:
            log.warning("digest_request_refused", host=self._host, reply_to=reply_to[:100],
                        error=str(exc).splitlines()[0])
            channel.basic_ack(delivery_tag=method.delivery_tag)
            return
        channel.basic_ack(delivery_tag=method.delivery_tag)
        if not self._trust.is_peer(requester):
            # Refused at once rather than left to time out: a peer list out of step with the others' is the
            # likely cause, and the asker then copies through libvirt without waiting. Nothing else is said.
            log.warning("peer_request_refused", host=self._host, user_id=str(requester)[:100],
                        reason="not a peer's broker user")
            who = requester or "a request without user_id"
            self._reply(channel, reply_to, properties.correlation_id, refusal(
                wanted, host=self._host, reason=NOT_A_PEER,
                detail=f"{who} is not a peer of {self._host}: no peer in its settings has that broker user"))
            return
        if isinstance(wanted, ReceiveRequest):
            self._on_ticket_request(connection, channel, properties, wanted, requester)
            return
        if isinstance(wanted, ClaimRequest | ReleaseRequest):
            self._on_claim_request(connection, channel, properties, wanted, requester)
            return
        request = wanted
        # Acked at once (above): a digest may outlast the broker's consumer timeout (30 min by default),
        # which would close the channel on an unacked request. Were the daemon to die, its queue and the
        # request go with it, and the asker notices. Too many at once are refused here, as the queue refuses
        # more.
        if self._in_flight >= MAX_WAITING_REQUESTS:
            log.warning("digest_request_refused", host=self._host, reply_to=reply_to[:100], error="busy")
            self._reply(channel, reply_to, properties.correlation_id, DigestReply(
                host=self._host, pool=request.pool, volume=request.volume, algorithm=BLOCK_DIGEST_ALGORITHM,
                error="too many digest requests at once"))
            return
        if self._incarnation and (properties.headers or {}).get(TAKEN_HEADER) is True:
            taken = DigestTaken(incarnation=self._incarnation)
            self._reply(channel, reply_to, properties.correlation_id, taken)
        self._in_flight += 1
        future = self._workers.submit(self._answer, request, requester)

        def send(done: Future[DigestReply]) -> None:
            self._in_flight -= 1
            reply = done.result()
            self._reply(channel, reply_to, properties.correlation_id, reply)
            self.answered += 1
            log.info("digest_request_answered", host=self._host, pool=request.pool, volume=request.volume,
                     error=reply.error)

        future.add_done_callback(lambda done: self._hand_back(connection, partial(send, done)))

    def _on_ticket_request(self, connection: Any, channel: Any, properties: Any, request: ReceiveRequest,
                           requester: str) -> None:
        def ticket() -> ReceiveTicket:
            if self._issue_ticket is None:
                return ReceiveTicket(host=self._host, pool=request.pool, volume=request.volume,
                                     error="this daemon runs no data channel")
            try:
                return self._issue_ticket(request, requester)
            except Exception as exc:  # the mover uploads through libvirt instead; this daemon goes on
                log.error("receive_ticket_failed", host=self._host, pool=request.pool, volume=request.volume,
                          exc_info=True)
                return ReceiveTicket(host=self._host, pool=request.pool, volume=request.volume,
                                     error=f"no ticket: {exc!r}"[:1000])

        # Finding the volume asks libvirt: on a worker, never on the connection's thread.
        self._on_lane(self._tickets, connection, channel, properties, ticket, busy=ReceiveTicket(
            host=self._host, pool=request.pool, volume=request.volume, error="too many ticket requests"))

    def _on_claim_request(self, connection: Any, channel: Any, properties: Any,
                          request: ClaimRequest | ReleaseRequest, requester: str) -> None:
        desk = self._claims
        if desk is None:  # said at once: the asker must not take an unwired daemon for a full one
            self._reply(channel, properties.reply_to, properties.correlation_id, refusal(
                request, host=self._host, reason=CLAIMS_NOT_SERVED, detail=f"{self._host} serves no claims"))
            return
        def work() -> BaseModel:
            try:
                return desk.answer(request, requester)
            except Exception as exc:  # a bug, not a verdict: refused, so the mover tries its next choice
                log.error("claim_failed", host=self._host, claim_id=request.claim_id, exc_info=True)
                return refusal(request, host=self._host, reason=CLAIM_FAILED, detail=f"claim failed: {exc!r}")

        # The live free room comes from libvirt: on the claims' worker, never on the connection's thread.
        self._on_lane(self._claim_lane, connection, channel, properties, work,
                      busy=refusal(request, host=self._host, reason=BUSY, detail="too many claims waiting"))

    def _on_lane(self, lane: _Lane, connection: Any, channel: Any, properties: Any,
                 work: Callable[[], BaseModel], *, busy: BaseModel) -> None:
        def send(done: Future[BaseModel]) -> None:
            lane.waiting -= 1
            self._reply(channel, properties.reply_to, properties.correlation_id, done.result())

        if lane.waiting >= MAX_WAITING_REQUESTS:
            self._reply(channel, properties.reply_to, properties.correlation_id, busy)
            return
        lane.waiting += 1
        lane.worker.submit(work).add_done_callback(
            lambda done: self._hand_back(connection, partial(send, done)))

    @staticmethod
    def _hand_back(connection: Any, callback: Callable[[], None]) -> None:
        # pika's connection belongs to its thread: replies are sent from there.
        with contextlib.suppress(*CONNECTION_ERRORS, pika.exceptions.ConnectionWrongStateError):
            connection.add_callback_threadsafe(callback)

