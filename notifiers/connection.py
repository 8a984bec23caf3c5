"""Opening pika blocking connections from BrokerSettings; the one place that knows pika's connection knobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from notifiers.errors import BrokerUnavailable
from notifiers.settings import BrokerSettings

ConnectionFactory = Callable[[], Any]
"""Returns a new, open pika BlockingConnection; called on the thread that will own it."""

# Errors after which the connection (or its only channel) is unusable and must be reopened.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)


def blocking_connection_factory(settings: BrokerSettings, *, connection_name: str) -> ConnectionFactory:
    """A factory for connections named `connection_name` (shown by `rabbitmqctl list_connections`)."""

    def connect() -> Any:
        parameters = pika.URLParameters(settings.url.get_secret_value())
        # A broker under a memory or disk alarm blocks publishers silently; give up after the confirm timeout.
        parameters.blocked_connection_timeout = settings.confirm_timeout_seconds
        parameters.client_properties = {"connection_name": connection_name}
        try:
            return pika.BlockingConnection(parameters)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot connect to {settings.redacted_url}: {exc!r}") from exc

    return connect
