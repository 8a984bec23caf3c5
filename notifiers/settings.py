"""The broker settings the service's YAML embeds under `broker:`, validated at the boundary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_EXCHANGE_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class BrokerSettings(BaseModel):
    """How to reach RabbitMQ and which exchanges carry notices and replies."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="amqp:// or amqps:// URL, e.g. amqp://evacuator:PASSWORD@mq:5672/%2F",
    )
    notices_exchange: str = Field(default="evacuator.notices", pattern=_EXCHANGE_NAME_PATTERN)
    replies_exchange: str = Field(default="evacuator.replies", pattern=_EXCHANGE_NAME_PATTERN)
    # Direct exchange between the hosts' own daemons (a copy's digest asked of its destination); tenants
    # have no permission on it. Its name prefixes queue names such as `<it>.alive.<host>.<32 hex>`, which
    # AMQP caps at 255 bytes: hence at most 150 characters.
    peers_exchange: str = Field(default="evacuator.peers", pattern=r"^[A-Za-z0-9_.:-]{1,150}$")
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
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError("expected an amqp:// or amqps:// URL with a host")
        return value

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

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield (name, self.redacted_url) if name == "url" else (name, value)
