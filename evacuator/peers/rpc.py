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
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any, TypeVar

import pika
import pika.exceptions
import structlog
from pydantic import BaseModel, ValidationError

from evacuator.errors import EvacuatorError
from evacuator.peers.messages import (
    TAKEN_HEADER,
    TAKEN_TYPE,
    DigestReply,
    DigestRequest,
    DigestTaken,
    PeerRequest,
    PeerTrust,
    alive_queue,
    declare_exchange,
    request_routing_key,
    responder_queue,
)
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM
from evacuator.transfer.wire import RECEIVE_TYPE, ReceiveRequest, ReceiveTicket
from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory, queue_consumers
from notifiers.errors import NotifierError

log = structlog.get_logger(__name__)

_POLL_SECONDS = 0.25
_DAEMON_CHECK_SECONDS = 5.0

Reply = TypeVar("Reply", bound=BaseModel)


class PeerClient:
    """Asks a host's daemon for its volume's digest or a data-channel ticket, one short connection per
    question (movers run on several threads, and a pika connection belongs to one). A digest is waited for
    as long as copying may take."""

    def __init__(
        self, connect: ConnectionFactory, *, trust: PeerTrust, exchange: str, timeout_base_seconds: float,
        min_bytes_per_second: float,
    ) -> None:
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
            log.info("peer_digest_taken", host=self.request.host, pool=self.request.pool,
                     volume=self.request.volume, incarnation=self._taken_by)

    def watched_queue(self, exchange: str) -> str:
        """Once the daemon said which connection took the request, that connection's own queue: it tells
        even when a restarted daemon already serves the host again. Before, the host's request queue."""
        if self._taken_by is not None:
            return alive_queue(exchange, self.request.host, self._taken_by)
        return responder_queue(exchange, self.request.host)


class PeerUnanswered(EvacuatorError):
    """No reply came; the caller takes the slow path (reading back, uploading through libvirt)."""
