"""The broker settings the service's YAML embeds under `broker:`, validated at the boundary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_EXCHANGE_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
# What an environment variable's name may be (POSIX): a name, never a value pasted in by mistake.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Fixed, so that no message built from a bad URL can echo a piece of it (urllib's do: "... as 'pa'").
_URL_EXPECTED = (
    "expected amqp://USER:PASSWORD@HOST[:PORT]/VHOST or amqps://... with a host and a numeric port "
    "(percent-encode @ : / ? # in the user and password)"
)


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


class BrokerSettings(BaseModel):
    """How to reach RabbitMQ and which exchanges carry notices and replies.

    The password is the URL's, or comes from `password_file` (its first line) or `password_env` (a variable,
    e.g. from systemd's EnvironmentFile=), read at each connection (notifiers/connection.py). Giving one of
    those and a password in the URL too is refused as ambiguous. None of them is ever logged or echoed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="amqp:// or amqps:// URL, e.g. amqp://evacuator:PASSWORD@mq:5672/%2F",
    )
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
        try:
            parts = urlsplit(value.get_secret_value())
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(_URL_EXPECTED) from None  # urllib's message may quote a piece of the password
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(_URL_EXPECTED)
        return value

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
    def user(self) -> str:
        """The broker user the service connects as."""
        return url_user(self.url.get_secret_value())

    @property
    def peers_virtual_host(self) -> str:
        """The vhost of the daemons' own traffic: `peers_vhost`, else the URL's."""
        return self.peers_vhost if self.peers_vhost is not None else url_vhost(self.url.get_secret_value())

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield (name, self.redacted_url) if name == "url" else (name, value)
