"""The broker settings the service's YAML embeds under `broker:`, validated at the boundary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_EXCHANGE_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
# What an environment variable's name may be (POSIX): a name, never a value pasted in by mistake.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Fixed, so that no message built from a bad URL can echo a piece of it (urllib's do: "... as 'pa'").
_URL_EXPECTED = (
    "expected amqp://USER:PASSWORD@HOST[:PORT]/VHOST or amqps://... with a host and a numeric port "
    "(percent-encode @ : / ? # in the user and password)"
)


# At most this many failover nodes: a RabbitMQ cluster has an odd handful of nodes, and every one that does
# not answer costs a connection attempt before the next is tried.
MAX_FAILOVER_URLS = 8


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, safe to log; a URL that cannot be parsed is `***`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        port = parts.port
    except ValueError:
        return "***"
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_vhost(url: str) -> str:
    """The virtual host a broker URL names, as pika reads it: the path's first segment, decoded; "/" when
    the URL names none."""
    path = urlsplit(url).path
    return unquote(path.split("/")[1]) if len(path) > 1 else "/"


def url_user(url: str) -> str:
    """The broker user a URL connects as, as pika reads it: its user, decoded; guest when it names none."""
    username = urlsplit(url).username
    return unquote(username) if username else "guest"


def _check_amqp_url(url: str) -> None:
    """Raise ValueError(_URL_EXPECTED) unless `url` is an amqp:// or amqps:// URL with a host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(_URL_EXPECTED) from None  # urllib's message may quote a piece of the password
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ValueError(_URL_EXPECTED)


def _failover_url(value: SecretStr) -> SecretStr:
    _check_amqp_url(value.get_secret_value())
    if urlsplit(value.get_secret_value()).password is not None:
        raise ValueError("holds a password: give it once, in url, password_file or password_env (it serves "
                         "every node): amqp://USER@HOST:PORT/VHOST")  # fmt: skip
    return value


# One of the cluster's other nodes: a URL without a password (errors are located at its index).
_FailoverUrl = Annotated[SecretStr, AfterValidator(_failover_url)]


def _node_address(url: str) -> tuple[str, int]:
    """(host, port) of a valid broker URL, the port defaulted as pika does: two URLs naming one node match."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (5671 if parts.scheme == "amqps" else 5672)


class BrokerSettings(BaseModel):
    """How to reach RabbitMQ and which exchanges carry notices and replies.

    The password is the URL's, or comes from `password_file` (its first line) or `password_env` (a variable,
    e.g. from systemd's EnvironmentFile=), read at each connection (notifiers/connection.py). Giving one of
    those and a password in the URL too is refused as ambiguous. None of them is ever logged or echoed.

    A RabbitMQ cluster's other nodes are `failover_urls`, tried in order when `url`'s node does not answer
    (notifiers/connection.py): the same scheme (so the same TLS files), user and virtual host as `url`, and
    no password of their own (the one password serves every node, as the cluster shares its users).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="amqp:// or amqps:// URL, e.g. amqp://evacuator:PASSWORD@mq:5672/%2F",
    )
    failover_urls: tuple[_FailoverUrl, ...] = Field(default=(), max_length=MAX_FAILOVER_URLS)
    password_file: Path | None = None
    password_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    notices_exchange: str = Field(default="evacuator.notices", pattern=_EXCHANGE_NAME_PATTERN)
    replies_exchange: str = Field(default="evacuator.replies", pattern=_EXCHANGE_NAME_PATTERN)
    # Topic exchange between the hosts' own daemons (a copy's ticket and digest asked of its destination,
    # routing key digest.<host>); tenants have no permission on it. Its name prefixes queue names such as
    # `<it>.alive.<host>.<32 hex>`, which AMQP caps at 255 bytes: hence at most 150 characters.
    peers_exchange: str = Field(default="evacuator.peers", pattern=r"^[A-Za-z0-9_.:-]{1,150}$")
    # The virtual host of the daemons' own traffic (the peers exchange, the cloud-wide slot queues), so that
    # no tenant permission can ever touch it; None: the vhost of `url`.
    peers_vhost: str | None = Field(default=None, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
    # How long a publish may stay blocked by a broker resource alarm before the connection is dropped and the
    # notice's future fails; callers also bound their own wait on the future.
    confirm_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # Backoff between attempts to deliver stored notices while the broker is unreachable (with jitter).
    reconnect_initial_seconds: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_seconds: float = Field(default=30.0, gt=0, le=600)
    # amqps:// only: the CA that signed the broker's certificate (null: the system's trusted CAs), and an
    # optional client certificate and key for brokers that require one.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    queue_type: Literal["quorum", "classic"] = "quorum"
    prefetch_count: int = Field(default=16, ge=1, le=10_000)

    @field_validator("url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr) -> SecretStr:
        _check_amqp_url(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _one_cluster(self) -> BrokerSettings:
        first = self.url.get_secret_value()
        seen = {_node_address(first)}
        for index, value in enumerate(self.failover_urls):
            node = value.get_secret_value()
            if urlsplit(node).scheme != urlsplit(first).scheme:
                raise ValueError(f"failover_urls[{index}] must use url's scheme (amqp:// or amqps://): every "
                                 "node is reached with the same TLS settings")  # fmt: skip
            if (url_user(node), url_vhost(node)) != (url_user(first), url_vhost(first)):
                raise ValueError(f"failover_urls[{index}] must name url's user and virtual host: the nodes "
                                 "are one cluster, which shares its users and virtual hosts")  # fmt: skip
            if _node_address(node) in seen:
                raise ValueError(f"failover_urls[{index}] names a node (host and port) already listed")
            seen.add(_node_address(node))
        return self

    @model_validator(mode="after")
    def _one_password(self) -> BrokerSettings:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give at most one of password_file and password_env")
        if self.password_file is not None or self.password_env is not None:
            parts = urlsplit(self.url.get_secret_value())
            if parts.password is not None:
                raise ValueError("url holds a password and password_file or password_env gives one too: "
                                 "remove the password from url (amqp://USER@HOST/VHOST)")  # fmt: skip
            if not parts.username:
                raise ValueError("url must name the user (amqp://USER@HOST/VHOST) when password_file or "
                                 "password_env gives the password")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _tls_files_need_amqps(self) -> BrokerSettings:
        uses_tls = urlsplit(self.url.get_secret_value()).scheme == "amqps"
        if not uses_tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError("ca_file, cert_file and key_file need an amqps:// url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    @property
    def redacted_url(self) -> str:
        """The broker URL with its password hidden, for logs and error messages."""
        return redact_url(self.url.get_secret_value())

    @property
    def node_urls(self) -> tuple[str, ...]:
        """Every node's URL in the order tried: `url`, then `failover_urls`. Secret: `url` may hold the
        password; log `redacted_node_urls`."""
        return (self.url.get_secret_value(), *(u.get_secret_value() for u in self.failover_urls))

    @property
    def redacted_node_urls(self) -> str:
        """Every node's URL, passwords hidden, comma-separated: for logs and error messages."""
        return ", ".join(redact_url(url) for url in self.node_urls)

    @property
    def user(self) -> str:
        """The broker user the service connects as."""
        return url_user(self.url.get_secret_value())

    @property
    def peers_virtual_host(self) -> str:
        """The vhost of the daemons' own traffic: `peers_vhost`, else the URL's."""
        return self.peers_vhost if self.peers_vhost is not None else url_vhost(self.url.get_secret_value())

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "url":
                yield name, self.redacted_url
            elif name == "failover_urls":
                yield name, tuple(redact_url(u.get_secret_value()) for u in self.failover_urls)
            else:
                yield name, value
