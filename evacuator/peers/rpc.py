"""The request client: asks a host's own daemon over the broker, for its volume's digest or a ticket to its
data channel (the wire: messages.py).

Why digests: a copy is verified against what the destination stored. Reading that back through a libvirt
download costs the destination's libvirtd 1.8 s of CPU per GiB, more than the copy itself; the destination's
evacuator daemon reads its own file for about 0.1 s per GiB instead. So each daemon answers digest requests
for its own pool (evacuator/peers/responder.py), and a mover asks the destination's (`PeerClient.digest`).
Anything short of a valid answer (no daemon listening, one that went away or is swamped, a timeout, a file
the peer cannot see, another digest algorithm, no broker) gives None, and the mover reads back through
libvirt: a missing peer slows verification but never weakens it. A ticket asked for the same way
(`PeerClient.ticket`) lets the mover write a copy through the destination's data channel
(evacuator/transfer/sender.py), which falls back to libvirt just as readily.

Claims differ: before copying, a mover reserves room on the destination through its daemon
(`PeerClient.claim`, answered by claim_desk.py). No answer is never a yes: it gives the outcome
`unanswered`, apart from `refused`, and the mover does not place blind on such a host.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import pika
import pika.exceptions
import structlog
from pydantic import BaseModel, ValidationError

from evacuator.errors import EvacuatorError
from evacuator.peers.messages import (
    CLAIM_TYPE,
    RELEASE_TYPE,
    TAKEN_HEADER,
    TAKEN_TYPE,
    ClaimReply,
    ClaimRequest,
    DigestReply,
    DigestRequest,
    DigestTaken,
    PeerRequest,
    PeerTrust,
    ReleaseReply,
    ReleaseRequest,
    alive_queue,
    declare_exchange,
    request_routing_key,
    responder_queue,
)
from evacuator.placement.model import FunctionKey, Room
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM
from evacuator.transfer.wire import RECEIVE_TYPE, ReceiveRequest, ReceiveTicket
from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory, queue_consumers
from notifiers.errors import NotifierError

log = structlog.get_logger(__name__)

_POLL_SECONDS = 0.25
_DAEMON_CHECK_SECONDS = 5.0

Reply = TypeVar("Reply", bound=BaseModel)


class ClaimStatus(StrEnum):
    GRANTED = "granted"
    REFUSED = "refused"  # the host's daemon said no: try the next choice, re-planned with `available`
    UNANSWERED = "unanswered"  # no daemon, no broker, a timeout or a garbled reply: never place blind


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimOutcome:
    """What came of a claim: `reason` is the daemon's stable code when refused (claims.Refusal's, or
    claim_desk's: `claims_not_served`, `not_a_peer`, ...), or why no answer came; `available`, the room the
    host had left for claims when it answered; `ttl_seconds`, how long a granted claim lasts unless renewed
    (by claiming again with the same id and content)."""

    status: ClaimStatus
    host: str
    claim_id: str
    reason: str | None = None
    detail: str | None = None
    available: Room | None = None
    ttl_seconds: int | None = None

    @property
    def granted(self) -> bool:
        return self.status is ClaimStatus.GRANTED


class PeerClient:
    """Asks a host's daemon for its volume's digest or a data-channel ticket, one short connection per
    question (movers run on several threads, and a pika connection belongs to one). A digest is waited for
    as long as copying may take."""

    def __init__(
        self, connect: ConnectionFactory, *, trust: PeerTrust, exchange: str, timeout_base_seconds: float,
        min_bytes_per_second: float, claim_timeout_seconds: float = 10.0,
    ) -> None:
        self._claim_timeout_seconds = claim_timeout_seconds
        self._connect = connect
        self._trust = trust
        self._exchange = exchange
        self._timeout_base_seconds = timeout_base_seconds
        self._min_bytes_per_second = min_bytes_per_second

    def digest(self, *, host: str, pool: str, volume: str, allocation_bytes: int) -> str | None:
        timeout_seconds = self._timeout_base_seconds + allocation_bytes / self._min_bytes_per_second
        context = {"host": host, "pool": pool, "volume": volume}
        try:
            request = DigestRequest(host=host, pool=pool, volume=volume, algorithm=BLOCK_DIGEST_ALGORITHM)
        except ValidationError as exc:  # a name no daemon answers for: read back instead
            log.info("peer_digest_unavailable", reason=str(exc).splitlines()[0], **context)
            return None
        reply = self._ask_for(request, DigestReply, timeout_seconds=timeout_seconds)
        if isinstance(reply, str):
            log.info("peer_digest_unavailable", reason=reply, **context)
            return None
        if reply.digest is None or (reply.host, reply.pool, reply.volume, reply.algorithm) != (
                host, pool, volume, BLOCK_DIGEST_ALGORITHM):
            reason = reply.error or "the reply is for something else"
            log.info("peer_digest_unavailable", reason=reason, **context)
            return None
        log.info("peer_digest_received", **context)
        return reply.digest

    def ticket(self, request: ReceiveRequest, *, timeout_seconds: float) -> ReceiveTicket | str:
        """The host's daemon's ticket to its data channel (which may be a refusal), or why none came."""
        return self._ask_for(request, ReceiveTicket, timeout_seconds=timeout_seconds,
                             message_type=RECEIVE_TYPE)

    def claim(self, host: str, *, claim_id: str, room: Room, vm_uuids: Sequence[str], ttl_seconds: int,
              functions: Collection[FunctionKey] = ()) -> ClaimOutcome:
        """Reserve `room` on `host` for `vm_uuids` (one VM, or a group as one claim) before copying them
        there. Claiming again with the same id and content is safe (a retry books nothing twice) and renews
        the claim. `functions`: the VMs' (tenant, function) keys, which the host refuses when it runs or
        expects one already (`function_taken`). A claim no daemon could take (a malformed id, negative
        sizes) raises ValidationError. A claim may be granted while its reply is lost (`unanswered`):
        release it anyway when giving up."""
        request = ClaimRequest(host=host, claim_id=claim_id, vm_uuids=tuple(vm_uuids),
                               memory_bytes=room.memory_bytes, vcpus=room.vcpus, disk_bytes=room.disk_bytes,
                               ttl_seconds=ttl_seconds, functions=tuple(sorted(functions)))
        context = {"host": host, "claim_id": claim_id, "vm_uuids": list(vm_uuids)}
        reply = self._ask_for(request, ClaimReply, timeout_seconds=self._claim_timeout_seconds,
                              message_type=CLAIM_TYPE)
        if not isinstance(reply, str) and (reply.host, reply.claim_id) != (host, claim_id):
            reply = "the reply is for another claim"
        if isinstance(reply, str):
            log.warning("peer_claim_unanswered", reason=reply, **context)
            return ClaimOutcome(status=ClaimStatus.UNANSWERED, host=host, claim_id=claim_id, reason=reply)
        available = None if reply.available is None else reply.available.room()
        if reply.granted:
            log.info("peer_claim_granted", ttl_seconds=reply.ttl_seconds, **context)
            return ClaimOutcome(status=ClaimStatus.GRANTED, host=host, claim_id=claim_id, available=available,
                                ttl_seconds=reply.ttl_seconds)
        log.info("peer_claim_refused", reason=reply.reason, detail=reply.detail, **context)
        return ClaimOutcome(status=ClaimStatus.REFUSED, host=host, claim_id=claim_id,
                            reason=reply.reason or "refused", detail=reply.detail, available=available)

    def release(self, host: str, claim_id: str) -> bool:
        """Give back a claim when its move ends (done, or rolled back). Best effort: it never raises, and
        says whether the host confirmed a claim was released; one that was not (no daemon, already expired)
        ends at its TTL anyway, which is the backstop for a mover that died too."""
        context = {"host": host, "claim_id": claim_id}
        try:
            request = ReleaseRequest(host=host, claim_id=claim_id)
        except ValidationError as exc:
            log.warning("peer_claim_release_unanswered", reason=str(exc).splitlines()[0], **context)
            return False
        reply = self._ask_for(request, ReleaseReply, timeout_seconds=self._claim_timeout_seconds,
                              message_type=RELEASE_TYPE)
        if isinstance(reply, str) or (reply.host, reply.claim_id) != (host, claim_id):
            reason = reply if isinstance(reply, str) else "the reply is for another claim"
            log.warning("peer_claim_release_unanswered", reason=reason, **context)
            return False
        log.info("peer_claim_released", released=reply.released, reason=reply.reason, **context)
        return reply.released

    def ask(self, request: PeerRequest, *, timeout_seconds: float, message_type: str | None = None) -> bytes:
        """The body of the host's daemon's reply to `request` (a digest request, or with `message_type`
        another kind); PeerUnanswered when no reply came from that daemon's broker user."""
        if self._trust.user_of(request.host) is None:
            raise PeerUnanswered(f"{request.host} is not a peer: no broker user to expect its answer from")
        try:
            connection = self._connect()
        except (EvacuatorError, NotifierError) as exc:  # the broker is down: the caller takes the slow path
            raise PeerUnanswered(str(exc)) from exc
        try:
            return self._exchange_messages(connection, request, timeout_seconds, message_type)
        except CONNECTION_ERRORS as exc:
            raise PeerUnanswered(repr(exc)) from exc
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()

    def _ask_for(self, request: PeerRequest, reply_type: type[Reply], *, timeout_seconds: float,
                 message_type: str | None = None) -> Reply | str:
        """The daemon's valid reply, or why there is none (for the caller's log)."""
        try:
            body = self.ask(request, timeout_seconds=timeout_seconds, message_type=message_type)
            return reply_type.model_validate_json(body)
        except ValidationError as exc:
            return str(exc).splitlines()[0]
        except PeerUnanswered as exc:
            return str(exc)

    def _exchange_messages(
        self, connection: Any, request: PeerRequest, timeout_seconds: float, message_type: str | None,
    ) -> bytes:
        channel = connection.channel()
        channel.confirm_delivery()
        declare_exchange(channel, self._exchange)  # so that "nobody listens" is an unroutable request
        replies_queue = channel.queue_declare(queue="", exclusive=True).method.queue
        awaited = _Awaited(request, correlation_id=uuid.uuid4().hex,
                           from_user=self._trust.user_of(request.host) or "")
        channel.basic_consume(queue=replies_queue, on_message_callback=awaited.on_reply, auto_ack=True)
        try:
            channel.basic_publish(
                exchange=self._exchange, routing_key=request_routing_key(request.host),
                body=request.model_dump_json().encode(), mandatory=True,
                properties=pika.BasicProperties(
                    user_id=self._trust.own_user,  # the broker refuses another; the responder checks it
                    reply_to=replies_queue, correlation_id=awaited.correlation_id,
                    content_type="application/json", headers={TAKEN_HEADER: True}, type=message_type,
                    # A request nobody took in time is dropped by the broker, not digested for nobody.
                    expiration=str(int(timeout_seconds * 1000)),
                ),
            )
        except pika.exceptions.UnroutableError as exc:
            raise PeerUnanswered(f"no daemon of {request.host} listens") from exc
        except pika.exceptions.NackError as exc:
            raise PeerUnanswered(f"the daemon of {request.host} has too many requests waiting") from exc
        return self._await_reply(connection, awaited, timeout_seconds)

    def _await_reply(self, connection: Any, awaited: _Awaited, timeout_seconds: float) -> bytes:
        host = awaited.request.host
        deadline = time.monotonic() + timeout_seconds
        next_check = time.monotonic() + _DAEMON_CHECK_SECONDS
        while awaited.reply is None and time.monotonic() < deadline:
            connection.process_data_events(time_limit=_POLL_SECONDS)
            if awaited.reply is None and time.monotonic() >= next_check:
                # A daemon that died after taking the request takes the request with it: stop waiting.
                if queue_consumers(connection, awaited.watched_queue(self._exchange)) is None:
                    raise PeerUnanswered(f"the daemon of {host} went away")
                next_check = time.monotonic() + _DAEMON_CHECK_SECONDS
        if awaited.reply is None:
            raise PeerUnanswered(f"no answer within {timeout_seconds:.0f} s")
        return awaited.reply


class _Awaited:
    """One request's messages as they arrive: its reply, and which connection of the daemon took it. Only
    messages published as `from_user`, the asked host's broker user, count: the queue is the asker's own, but
    any broker user may publish to a queue by its name."""

    def __init__(self, request: PeerRequest, *, correlation_id: str, from_user: str) -> None:
        self.request = request
        self.correlation_id = correlation_id
        self.from_user = from_user
        self.reply: bytes | None = None
        self._taken_by: str | None = None

    def on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        if properties.correlation_id != self.correlation_id or self.reply is not None:
            return
        if properties.user_id != self.from_user:
            log.warning("peer_reply_ignored", host=self.request.host, user_id=properties.user_id,
                        expected=self.from_user)
            return
        if properties.type != TAKEN_TYPE:
            self.reply = body
            return
        with contextlib.suppress(ValidationError):  # a garbled notice: keep watching the host's queue
            self._taken_by = DigestTaken.model_validate_json(body).incarnation
            about = ({"claim_id": self.request.claim_id}
                     if isinstance(self.request, ClaimRequest | ReleaseRequest)
                     else {"pool": self.request.pool, "volume": self.request.volume})  # fmt: skip
            log.info("peer_digest_taken", host=self.request.host, incarnation=self._taken_by, **about)

    def watched_queue(self, exchange: str) -> str:
        """Once the daemon said which connection took the request, that connection's own queue: it tells
        even when a restarted daemon already serves the host again. Before, the host's request queue."""
        if self._taken_by is not None:
            return alive_queue(exchange, self.request.host, self._taken_by)
        return responder_queue(exchange, self.request.host)


class PeerUnanswered(EvacuatorError):
    """No reply came; the caller takes the slow path (reading back, uploading through libvirt)."""
