"""ReplyConsumer: consumes a host's replies queue on its own thread, hands each delivery on, acks it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pika.exceptions
import structlog

from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory, blocking_connection_factory
from notifiers.consumer_thread import ConsumerThread
from notifiers.reply_acceptance import RejectedDelivery, TenantReply, route_delivery
from notifiers.settings import BrokerSettings
from notifiers.topology import Topology, check_word

_log = structlog.get_logger(__name__)

# The AMQP reply code with which the broker refuses to declare a queue that exists with other arguments.
_PRECONDITION_FAILED = 406

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
            channel, queue = self._declare_queue(connection, channel)
            channel.basic_qos(prefetch_count=self._settings.prefetch_count)
            channel.basic_consume(queue=queue, on_message_callback=self._on_message)
        except BaseException:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
            raise
        _log.info("broker_connected", role="replies", host=self._host, url=self._settings.redacted_url)
        return connection, channel

    def _declare_queue(self, connection: Any, channel: Any) -> tuple[Any, str]:
        """The bounded replies queue, or an unbounded one an older version declared (on a new channel: the
        broker closed the first one with 406); returns the channel to consume on and the queue's name."""
        try:
            return channel, self._topology.declare_host_replies_queue(channel, self._host)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _PRECONDITION_FAILED:
                raise
            detail = exc.reply_text
        # Consuming goes on: refusing to start would leave the tenants unanswered until an operator acts.
        channel = connection.channel()
        queue = self._topology.declare_host_replies_queue(channel, self._host, passive=True)
        _log.warning(
            "replies_queue_unbounded", host=self._host, queue=queue, detail=detail,
            action="with no incident open, stop the daemon, delete the queue and start it again (it is "
            "declared bounded); until then a policy with max-length, max-length-bytes and overflow "
            "reject-publish bounds it",
        )  # fmt: skip
        return channel, queue

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        routed = route_delivery(
            host=self._host,
            user_id=properties.user_id,
            routing_key=method.routing_key,
            body=body,
            message_id=properties.message_id,
        )
        if isinstance(routed, RejectedDelivery):
            self._reject(routed)
            channel.basic_ack(delivery_tag=method.delivery_tag)
            return
        context = {"host": self._host, "tenant": routed.tenant, "vm_uuid": routed.reply.vm_uuid}
        _log.info("reply_received", reply_type=routed.reply.type, **context)
        try:
            self._on_reply(routed)
        except Exception:
            requeue = not method.redelivered
            _log.exception("reply_handler_failed", requeue=requeue, **context)
            channel.basic_nack(delivery_tag=method.delivery_tag, requeue=requeue)
            return
        channel.basic_ack(delivery_tag=method.delivery_tag)

    def _reject(self, rejected: RejectedDelivery) -> None:
        if self._on_rejected is None:
            _log.warning(
                "reply_rejected", host=self._host, reason=rejected.reason, user_id=rejected.user_id,
                routing_key=rejected.routing_key,
            )  # fmt: skip
            return
        # The handler logs it, as often as its limit allows: a flood must not flood the journal from here.
        try:
            self._on_rejected(rejected)
        except Exception:
            _log.exception("rejection_handler_failed", host=self._host)
