"""Tenant replies for one host: pure acceptance rules, and the ReplyConsumer that applies them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory, blocking_connection_factory
from notifiers.consumer_thread import ConsumerThread
from notifiers.errors import RejectedReply
from notifiers.messages import Reply, parse_reply
from notifiers.settings import BrokerSettings
from notifiers.topology import Topology, check_word

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantReply:
    """A reply the broker vouches for: `tenant` is the authenticated broker user that published it."""

    tenant: str
    host: str
    reply: Reply
    message_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedDelivery:
    """A delivery the consumer refused (and acked, so it is not redelivered), with the reason."""

    reason: str
    user_id: str | None
    routing_key: str
    message_id: str | None
    code: str = "refused_reply"


def accept_reply(
    *, host: str, user_id: str | None, routing_key: str, body: bytes, message_id: str | None = None
) -> TenantReply:
    """Validate one delivery from the host's replies queue; raise RejectedReply (or MalformedReply) if unfit.

    The broker checks that a present `user_id` is the publisher's own user and that the routing key starts
    with it, but accepts a message without `user_id`: such a reply proves nothing about its sender.
    """
    if not user_id:
        raise RejectedReply("missing user_id: the publisher is unknown", code="missing_user_id")
    expected_key = f"{user_id}.{host}"
    if routing_key != expected_key:
        raise RejectedReply(f"routing key {routing_key!r} is not {expected_key!r}", code="wrong_routing_key")
    return TenantReply(tenant=user_id, host=host, reply=parse_reply(body), message_id=message_id)


ReplyHandler = Callable[[TenantReply], None]
RejectionHandler = Callable[[RejectedDelivery], None]


class ReplyConsumer:
    """Consumes `<replies_exchange>.<host>` on its own thread and connection, handing accepted replies on.

    `on_reply` runs on the consumer thread and must return quickly; the message is acked after it returns.
    If it raises, the message is requeued once, then dropped (logged) so one bad reply cannot wedge the queue.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        host: str,
        on_reply: ReplyHandler,
        on_rejected: RejectionHandler | None = None,
        connect: ConnectionFactory | None = None,
    ) -> None:
        self._settings = settings
        self._topology = Topology.from_settings(settings)
        self._host = check_word("host", host)
        self._on_reply = on_reply
        self._on_rejected = on_rejected
        self._connect = connect or blocking_connection_factory(
            settings, connection_name=f"evacuator-replies-{host}"
        )
        self._loop = ConsumerThread(open_connection=self._open, role="replies", host=self._host)

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Connect, declare the queue and consume; raise BrokerUnavailable if the first connect fails."""
        self._loop.start(timeout_seconds=timeout_seconds)

    def close(self, *, timeout_seconds: float = 30.0) -> None:
        """Stop consuming; unacked messages go back to the queue."""
        self._loop.close(timeout_seconds=timeout_seconds)

    def _open(self) -> tuple[Any, Any]:
        connection = self._connect()
        try:
            channel = connection.channel()
            self._topology.declare_exchanges(channel)
            queue = self._topology.declare_host_replies_queue(channel, self._host)
            channel.basic_qos(prefetch_count=self._settings.prefetch_count)
            channel.basic_consume(queue=queue, on_message_callback=self._on_message)
        except BaseException:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
            raise
        _log.info("broker_connected", role="replies", host=self._host, url=self._settings.redacted_url)
        return connection, channel

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        user_id, message_id = properties.user_id, properties.message_id
        try:
            reply = accept_reply(
                host=self._host,
                user_id=user_id,
                routing_key=method.routing_key,
                body=body,
                message_id=message_id,
            )
        except RejectedReply as exc:
            self._reject(exc, user_id, method.routing_key, message_id)
            channel.basic_ack(delivery_tag=method.delivery_tag)
            return
        context = {"host": self._host, "tenant": reply.tenant, "vm_uuid": reply.reply.vm_uuid}
        _log.info("reply_received", reply_type=reply.reply.type, **context)
        try:
            self._on_reply(reply)
        except Exception:
            requeue = not method.redelivered
            _log.exception("reply_handler_failed", requeue=requeue, **context)
            channel.basic_nack(delivery_tag=method.delivery_tag, requeue=requeue)
            return
        channel.basic_ack(delivery_tag=method.delivery_tag)

    def _reject(
        self, exc: RejectedReply, user_id: str | None, routing_key: str, message_id: str | None
    ) -> None:
        reason = exc.reason
        _log.warning(
            "reply_rejected", host=self._host, reason=reason, user_id=user_id, routing_key=routing_key
        )
        if self._on_rejected is None:
            return
        rejected = RejectedDelivery(
            reason=reason, user_id=user_id, routing_key=routing_key, message_id=message_id, code=exc.code
        )
        try:
            self._on_rejected(rejected)
        except Exception:
            _log.exception("rejection_handler_failed", host=self._host)
