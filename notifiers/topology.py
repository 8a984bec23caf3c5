"""Names and declarations of the broker objects: exchanges, queues, bindings and routing keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from notifiers.errors import InvalidName
from notifiers.settings import BrokerSettings

# One word of a topic routing key: no dots (they separate words), no wildcards, no spaces.
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


# The second word of a reply's routing key that reaches every host's replies queue, not one host's: no host
# may be named so.
BROADCAST_HOST = "all"

# Bounds of each host's replies queue; past either, the broker refuses (nacks) further replies until the host
# has read some (`reject-publish`), so a tenant flooding it fills neither the broker's memory nor its disk.
# A host runs at most a few hundred VMs and each tenant answers a VM a handful of times an incident; registers
# sent to every host (`<tenant>.all`) reach every queue but are read as they come (the consumer takes
# thousands a second). 5,000 replies is ten times a busy host's incident while its daemon restarts; 4 MiB
# holds those (a reply is about 250 bytes) or 64 replies of the largest size the service reads (64 KiB).
# A quorum queue takes one message more than its bound (it refuses once it is over), so one message of up to
# the broker's `max_message_size` may come on top (README: "Broker limits").
REPLIES_MAX_LENGTH = 5_000
REPLIES_MAX_LENGTH_BYTES = 4 * 1024 * 1024
REPLIES_QUEUE_BOUNDS: Mapping[str, object] = MappingProxyType({
    "x-max-length": REPLIES_MAX_LENGTH,
    "x-max-length-bytes": REPLIES_MAX_LENGTH_BYTES,
    "x-overflow": "reject-publish",
})  # fmt: skip


def is_word(name: str) -> bool:
    """Whether `name` can be one routing-key word."""
    return bool(_WORD.fullmatch(name))


def check_word(kind: str, name: str) -> str:
    """Return `name` if it can be one routing-key word, else raise InvalidName naming `kind`."""
    if not _WORD.fullmatch(name):
        raise InvalidName(
            f"{kind} name {name!r} cannot be a routing key word: expected 1-63 of A-Z a-z 0-9 _ -, "
            "starting with a letter or digit (use the short host name, not the FQDN)"
        )
    return name


def notice_routing_key(tenant: str, host: str, notice_type: str) -> str:
    """`<tenant>.<host>.<type>`: tenants' queues bind `<tenant>.#`."""
    return f"{check_word('tenant', tenant)}.{check_word('host', host)}.{notice_type}"


def reply_routing_key(tenant: str, host: str) -> str:
    """`<tenant>.<host>`: the broker only lets a tenant publish keys starting with its own name."""
    return f"{check_word('tenant', tenant)}.{check_word('host', host)}"


def tenant_queue(tenant: str) -> str:
    """The durable queue holding one tenant's notices; the tenant may read only this queue."""
    return f"{check_word('tenant', tenant)}.notices"


def host_replies_queue(host: str, *, replies_exchange: str) -> str:
    """The durable queue from which the service on `host` consumes its tenants' replies.

    Named after the replies exchange too: two deployments (or test runs) sharing a broker and host names but
    not exchanges must not share, and so split between them, one host's replies."""
    return f"{replies_exchange}.{check_word('host', host)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """The exchange names and queue type in use; declares objects on a channel it is handed."""

    notices_exchange: str
    replies_exchange: str
    queue_type: Literal["quorum", "classic"]

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> Topology:
        return cls(
            notices_exchange=settings.notices_exchange,
            replies_exchange=settings.replies_exchange,
            queue_type=settings.queue_type,
        )

    def declare_exchanges(self, channel: Any) -> None:
        """Both durable topic exchanges; idempotent."""
        for name in (self.notices_exchange, self.replies_exchange):
            channel.exchange_declare(exchange=name, exchange_type="topic", durable=True)

    def declare_tenant_queue(self, channel: Any, tenant: str, *, passive: bool = False) -> str:
        """The tenant's notices queue, bound to every notice routed to it; returns the queue name.

        A queue declared earlier with other arguments (the other `queue_type`: a classic queue from before a
        move to quorum queues) makes the broker close the channel with 406 PRECONDITION_FAILED: then call
        again on a new channel with `passive` set, which uses the queue as it is."""
        queue = tenant_queue(tenant)
        if passive:
            channel.queue_declare(queue=queue, passive=True)
        else:
            self._declare_queue(channel, queue)
        channel.queue_bind(queue=queue, exchange=self.notices_exchange, routing_key=f"{tenant}.#")
        return queue

    def declare_host_replies_queue(self, channel: Any, host: str, *, passive: bool = False) -> str:
        """The host's replies queue, bounded (REPLIES_QUEUE_BOUNDS) and bound to every tenant's replies about
        that host and to those routed to every host; returns its name.

        A queue declared earlier without the bounds (by an older version) makes the broker close the channel
        with 406 PRECONDITION_FAILED: then call again on a new channel with `passive` set, which uses the
        queue as it is."""
        queue = host_replies_queue(host, replies_exchange=self.replies_exchange)
        if passive:
            channel.queue_declare(queue=queue, passive=True)
        else:
            self._declare_queue(channel, queue, bounds=REPLIES_QUEUE_BOUNDS)
        for to in (check_word("host", host), BROADCAST_HOST):
            channel.queue_bind(queue=queue, exchange=self.replies_exchange, routing_key=f"*.{to}")
        return queue

    def _declare_queue(self, channel: Any, queue: str, *, bounds: Mapping[str, object] | None = None) -> None:
        arguments = {"x-queue-type": self.queue_type, **(bounds or {})}
        channel.queue_declare(queue=queue, durable=True, arguments=arguments)
