"""Pipelined confirmed publishing: many persistent notices in flight, confirms tallied as they come.

Waiting for each confirm before the next publish (NoticePublisher) costs a broker round trip and an fsync per
notice; keeping up to `window` unconfirmed lets the broker batch both. Every message is still persistent,
mandatory and confirmed: publish_all returns only when the broker has acked all of them, or raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from notifiers.connection import connection_parameters
from notifiers.errors import BrokerUnavailable, NoticeNacked, UnroutableNotice


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """One encoded notice and where it goes."""

    routing_key: str
    body: bytes
    message_id: str
    notice_type: str


class _Run:
    """The state of one publish_all on pika's asynchronous SelectConnection (single-threaded, callbacks)."""

    def __init__(
        self, parameters: pika.URLParameters, exchange: str, messages: Sequence[Outgoing], window: int
    ):
        self.parameters, self.exchange, self.messages, self.window = parameters, exchange, messages, window
        self.next_index = 0
        self.unconfirmed: set[int] = set()
        self.confirmed = 0
        self.error: Exception | None = None
        self.channel: Any = None
        self.connection = pika.SelectConnection(
            parameters, on_open_callback=self._opened, on_open_error_callback=self._failed_to_open,
            on_close_callback=self._closed,
        )  # fmt: skip

    def _opened(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._channel_opened)

    def _failed_to_open(self, connection: Any, error: Exception | str) -> None:
        self.error = BrokerUnavailable(f"cannot connect: {error!r}")
        connection.ioloop.stop()

    def _closed(self, connection: Any, reason: Exception) -> None:
        if self.error is None and self.confirmed < len(self.messages):
            self.error = BrokerUnavailable(f"connection closed before every confirm: {reason!r}")
        connection.ioloop.stop()

    def _channel_opened(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_return_callback(self._returned)
        channel.confirm_delivery(ack_nack_callback=self._confirm)
        self._fill()

    def _fill(self) -> None:
        while len(self.unconfirmed) < self.window and self.next_index < len(self.messages):
            message = self.messages[self.next_index]
            self.next_index += 1
            self.unconfirmed.add(self.next_index)  # delivery tags count from 1 on a confirm channel
            self.channel.basic_publish(
                self.exchange, message.routing_key, message.body,
                pika.BasicProperties(
                    content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=message.message_id, type=message.notice_type, app_id="evacuator",
                ),
                mandatory=True,
            )  # fmt: skip

    def _returned(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.error = UnroutableNotice(f"no queue is bound for {method.routing_key}")

    def _confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self.error = NoticeNacked(f"the broker nacked delivery {method.delivery_tag}")
        tags = (
            {tag for tag in self.unconfirmed if tag <= method.delivery_tag}
            if method.multiple
            else {method.delivery_tag}
        )
        self.unconfirmed -= tags
        self.confirmed += len(tags)
        if self.error is not None or self.confirmed >= len(self.messages):
            self.connection.close()
        else:
            self._fill()


def publish_all(
    url: str, exchange: str, messages: Sequence[Outgoing], *, window: int = 1000, ca_file: Path | None = None
) -> int:
    """Publish all, persistent and confirmed, at most `window` in flight; returns how many were acked.

    Raises UnroutableNotice, NoticeNacked or BrokerUnavailable if any message was not taken.
    """
    if not messages:
        return 0
    run = _Run(connection_parameters(url, ca_file=ca_file), exchange, messages, window)
    run.connection.ioloop.start()
    if run.error is not None:
        raise run.error
    return run.confirmed
