"""TenantClient: the tenant's side of the contract (read notices, answer ready) over the tenant's own user."""

from __future__ import annotations

import collections
import contextlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
import structlog

from notifiers.connection import CONNECTION_ERRORS, connect_first, connection_parameters
from notifiers.errors import BrokerRefused, BrokerUnavailable, InvalidName, UnknownNoticeType
from notifiers.messages import Notice, PostponeReply, ReadyReply, RegisterReply, Reply, encode, parse_notice
from notifiers.settings import redact_url
from notifiers.topology import BROADCAST_HOST, check_word, reply_routing_key, tenant_queue

log = structlog.get_logger(__name__)

_Delivery = tuple[Any, bytes]


class TenantClient:
    """One tenant's connection: `tenant` must be the URL's user, whom the broker names in `user_id`.

    Single-threaded: use it from the thread that created it. The connection opens on first use.
    """

    def __init__(
        self,
        url: str,
        tenant: str,
        *,
        replies_exchange: str = "evacuator.replies",
        ca_file: Path | None = None,
        failover_urls: Sequence[str] = (),
    ) -> None:
        """`failover_urls`: a RabbitMQ cluster's other nodes (same user; a URL without a password uses
        `url`'s), tried in turn when the node that answered last does not."""
        user = unquote(urlsplit(url).username or "")
        if user != check_word("tenant", tenant):
            raise InvalidName(f"tenant {tenant!r} must connect as its own broker user, not {user!r}")
        for other in failover_urls:
            other_user = unquote(urlsplit(other).username or "")
            if other_user != user:
                raise InvalidName(f"every node URL must name the tenant's user {user!r}, not {other_user!r}")
        self._url = url
        self._urls = (url, *failover_urls)
        self._answered = 0  # the node that answered last: tried first
        self._ca_file = ca_file
        self._tenant = tenant
        self._replies_exchange = replies_exchange
        self._connection: Any = None
        self._notices: Any = None
        self._replies: Any = None
        self._inbox: collections.deque[_Delivery] = collections.deque()

    def __enter__(self) -> TenantClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def next_notice(self, timeout_seconds: float) -> Notice | None:
        """The next notice from the tenant's queue, acked; None if none came within the timeout.

        A malformed notice is acked too (it would only come back) and raises MalformedNotice. A notice of a
        type a newer service added is acked and skipped (within schema 1 a client ignores what it does not
        know)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            body = self._next_body(deadline)
            if body is None:
                return None
            try:
                return parse_notice(body)
            except UnknownNoticeType as exc:
                log.info("notice_type_unknown_skipped", tenant=self._tenant, reason=exc.reason)

    def _next_body(self, deadline: float) -> bytes | None:
        try:
            self._ensure_consuming()
            while not self._inbox:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._connection.process_data_events(time_limit=remaining)
            method, body = self._inbox.popleft()
            self._notices.basic_ack(delivery_tag=method.delivery_tag)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._notices = None
            raise BrokerRefused(
                f"consume {tenant_queue(self._tenant)}", exc.reply_code, exc.reply_text
            ) from exc
        except CONNECTION_ERRORS as exc:
            self._drop()
            raise BrokerUnavailable(f"reading notices failed: {exc!r}") from exc
        return bytes(body)

    def send_ready(self, host: str, vm_uuid: str, event_id: str | None = None) -> str:
        """Tell the service on `host` that `vm_uuid` may move now; returns once the broker confirmed it."""
        return self.send(host, ReadyReply(vm_uuid=vm_uuid, event_id=event_id))

    def send_postpone(self, host: str, vm_uuid: str, seconds: int, event_id: str | None = None) -> str:
        """Ask the service on `host` to move `vm_uuid` later by `seconds` (the answer comes as a notice)."""
        return self.send(host, PostponeReply(vm_uuid=vm_uuid, postpone_seconds=seconds, event_id=event_id))

    def send_register(self, host: str | None, vm_uuid: str, window_seconds: int) -> str:
        """Register the VM's preprocessing window with the service on `host`, or (None) with every host:
        the one holding the VM keeps it."""
        return self.send(BROADCAST_HOST if host is None else host,
                         RegisterReply(vm_uuid=vm_uuid, window_seconds=window_seconds))

    def send(self, host: str, reply: Reply) -> str:
        """Publish a reply as this tenant (user_id set), persistent and mandatory, confirmed by the broker;
        returns its message_id, which a reply_rejected names as `in_reply_to`."""
        message_id = str(uuid.uuid4())
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            user_id=self._tenant,
            message_id=message_id,
            type=reply.type,
        )
        try:
            self._ensure_replies_channel().basic_publish(
                exchange=self._replies_exchange,
                routing_key=reply_routing_key(self._tenant, host),
                body=encode(reply),
                properties=properties,
                mandatory=True,
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._replies = None
            raise BrokerRefused("publish the reply", exc.reply_code, exc.reply_text) from exc
        except pika.exceptions.UnroutableError as exc:
            raise BrokerRefused("route the reply", 312, f"no service consumes replies for {host}") from exc
        except CONNECTION_ERRORS as exc:
            self._drop()
            raise BrokerUnavailable(f"sending the reply failed: {exc!r}") from exc
        return message_id

    def close(self) -> None:
        """Close the connection; unacked notices return to the queue."""
        self._drop()

    def _ensure_connection(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._connection = self._connect()
            self._notices = self._replies = None
        return self._connection

    def _connect(self) -> Any:
        """The node that answered last first, then the others in order (a quorum queue lives on, and is
        consumed from, any node of the cluster); a node URL without a password uses the first's."""
        shared = urlsplit(self._url).password
        nodes = [(redact_url(url), connection_parameters(
            url, password=None if urlsplit(url).password or shared is None else unquote(shared),
            ca_file=self._ca_file)) for url in self._urls]  # fmt: skip
        self._answered, connection, _ = connect_first(nodes, start=self._answered)
        return connection

    def _ensure_consuming(self) -> None:
        if self._notices is not None and self._notices.is_open:
            return
        self._inbox.clear()  # unacked deliveries of a closed channel are redelivered anyway
        channel = self._ensure_connection().channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue=tenant_queue(self._tenant), on_message_callback=self._deliver)
        self._notices = channel

    def _deliver(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._inbox.append((method, body))

    def _ensure_replies_channel(self) -> Any:
        if self._replies is None or not self._replies.is_open:
            channel = self._ensure_connection().channel()
            channel.confirm_delivery()
            self._replies = channel
        return self._replies

    def _drop(self) -> None:
        connection, self._connection, self._notices, self._replies = self._connection, None, None, None
        self._inbox.clear()
        if connection is not None and connection.is_open:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
