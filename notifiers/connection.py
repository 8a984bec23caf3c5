"""Opening pika blocking connections from BrokerSettings; the one place that knows pika's connection knobs."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions
import structlog

from notifiers.errors import BrokerUnavailable
from notifiers.settings import BrokerSettings, redact_url

_log = structlog.get_logger(__name__)

ConnectionFactory = Callable[[], Any]
"""Returns a new, open pika BlockingConnection; called on the thread that will own it."""

ACCESS_REFUSED = 403  # AMQP reply codes the broker closes a channel with
_NOT_FOUND = 404
_RESOURCE_LOCKED = 405

# Errors after which the connection (or its only channel) is unusable and must be reopened.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)


def broker_password(settings: BrokerSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The password `password_file` (its first line, trimmed) or `password_env` gives, read now; None when
    neither is set (the URL's own password, if any, is used). A missing or unreadable file, or an unset or
    empty variable, raises BrokerUnavailable naming the file or the variable, never the password."""
    if settings.password_file is not None:
        path = settings.password_file
        try:
            with path.open(encoding="utf-8") as file:
                password = file.readline().strip()  # as the IPMI password_file: first line, trimmed
        except OSError as exc:
            raise BrokerUnavailable(f"broker.password_file {path}: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise BrokerUnavailable(f"broker.password_file {path}: not UTF-8 text") from None
        if not password:
            raise BrokerUnavailable(f"broker.password_file {path}: its first line is empty")
        return password
    if settings.password_env is not None:
        password = (os.environ if environ is None else environ).get(settings.password_env, "")
        if not password:
            raise BrokerUnavailable(f"broker.password_env: the environment variable {settings.password_env} "
                                    "is not set or empty")  # fmt: skip
        return password
    return None


def blocking_connection_factory(
    settings: BrokerSettings, *, connection_name: str, vhost: str | None = None
) -> ConnectionFactory:
    """A factory for connections named `connection_name` (shown by `rabbitmqctl list_connections`), to the
    virtual host `vhost` (None: the URL's). The password is read at each connection (`broker_password`), so
    a rotated file or variable takes effect at the next reconnect.

    Each connection goes to the first node that answers: `url`, then `failover_urls` (a cluster's other
    nodes) in order, except that the node that answered this factory last is tried first (then the ones
    after it, round), so a dead node costs one failed attempt, not one per connection: a powered-off node
    costs its whole connect timeout. A node that answers after another did not is logged
    (`broker_failover`); when none does, BrokerUnavailable names each node (passwords hidden) and why."""
    answered = 0  # index of the node that answered last

    def connect() -> Any:
        nonlocal answered
        nodes = node_parameters(settings, connection_name=connection_name, vhost=vhost)
        answered, connection, failures = connect_first(nodes, start=answered)
        if failures:
            _log.warning("broker_failover", connection=connection_name, node=nodes[answered][0],
                         unreachable=failures)  # fmt: skip
        return connection

    return connect


def connect_first(nodes: Sequence[tuple[str, pika.URLParameters]], *,
                  start: int) -> tuple[int, Any, list[str]]:  # fmt: skip
    """A blocking connection to the first of `nodes` (shown, parameters) that answers, trying them in order
    from `start` round (the one that answered last, so a dead node costs one failed attempt, not one per
    connection): its index, the connection, and why each node tried before it failed. When none answers,
    BrokerUnavailable names each node (as shown) and why."""
    start = start if start < len(nodes) else 0
    failures: list[str] = []
    last: Exception | None = None
    for index in [*range(start, len(nodes)), *range(start)]:
        shown, parameters = nodes[index]
        try:
            return index, pika.BlockingConnection(parameters), failures
        except CONNECTION_ERRORS as exc:
            failures.append(f"{shown}: {exc!r}")
            last = exc
    if len(failures) == 1:
        raise BrokerUnavailable(f"cannot connect to {failures[0]}") from last
    raise BrokerUnavailable(f"cannot connect to any node of the broker: {'; '.join(failures)}") from last


def node_parameters(
    settings: BrokerSettings, *, connection_name: str, vhost: str | None = None
) -> list[tuple[str, pika.URLParameters]]:
    """(the node's URL with its password hidden, pika parameters) for every node in the order tried. The one
    password (`password_file` or `password_env`, read now, else `url`'s) serves every node; each amqps://
    node verifies its own certificate and host name against the same CA."""
    urls = settings.node_urls
    password = broker_password(settings)
    shared = password if password is not None else _url_password(urls[0])
    nodes: list[tuple[str, pika.URLParameters]] = []
    for index, url in enumerate(urls):
        parameters = connection_parameters(
            url, password=password if index == 0 else shared, vhost=vhost,
            ca_file=settings.ca_file, cert_file=settings.cert_file, key_file=settings.key_file,
        )  # fmt: skip
        # A broker under a memory or disk alarm blocks publishers silently; give up after the confirm timeout.
        parameters.blocked_connection_timeout = settings.confirm_timeout_seconds
        parameters.client_properties = {"connection_name": connection_name}
        nodes.append((redact_url(url), parameters))
    return nodes


def _url_password(url: str) -> str | None:
    """The password a URL holds, decoded as pika decodes it; it serves the failover nodes too."""
    password = urlsplit(url).password
    return None if password is None else unquote(password)


def connection_parameters(
    url: str, *, password: str | None = None, vhost: str | None = None,
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None,
) -> pika.URLParameters:
    """pika parameters for `url`, with `password` and `vhost` (when given) in place of the URL's; amqps://
    verifies the broker's certificate and host name against the CA."""
    parts = urlsplit(url)
    if password is not None:
        host = parts.netloc.rpartition("@")[2]
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        parts = parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}")
    parameters = pika.URLParameters(urlunsplit(parts))
    if vhost is not None:
        parameters.virtual_host = vhost
    if parts.scheme == "amqps":
        try:
            context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
            if cert_file is not None:
                context.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
        except (OSError, ssl.SSLError) as exc:
            raise BrokerUnavailable(f"cannot load the TLS files ({ca_file}, {cert_file}): {exc}") from exc
        parameters.ssl_options = pika.SSLOptions(context, server_hostname=parts.hostname)
    return parameters


def queue_consumers(connection: Any, queue: str) -> int | None:
    """How many consumers `queue` has, or None when it does not exist (a passive declare, on a channel of
    its own: the broker closes the channel that asks about a missing queue). Another connection's exclusive
    queue cannot be asked about (RESOURCE_LOCKED): it exists while that connection lives, which is what
    its askers want to know (this service's exclusive queues live as long as their owner serves), so it
    counts as one consumer."""
    channel = connection.channel()
    try:
        found = channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            return None
        if exc.reply_code == _RESOURCE_LOCKED:
            return 1
        raise
    with contextlib.suppress(*CONNECTION_ERRORS):
        channel.close()
    return int(found.method.consumer_count)
