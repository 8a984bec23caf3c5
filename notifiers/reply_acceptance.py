"""Which tenant replies a host accepts: pure rules over one delivery's broker properties and body."""

from __future__ import annotations

from dataclasses import dataclass

from notifiers.errors import RejectedReply
from notifiers.messages import Reply, parse_reply
from notifiers.topology import BROADCAST_HOST, is_word
from notifiers.wire import WireRejectCode


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantReply:
    """A reply the broker vouches for: `tenant` is the authenticated broker user that published it."""

    tenant: str
    host: str
    reply: Reply
    message_id: str | None
    # Routed `<tenant>.all`, to every host (a tenant registering a window need not know the VM's host):
    # only the host holding the VM acts on it or answers it.
    broadcast: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedDelivery:
    """A delivery the consumer refused (and acked, so it is not redelivered), with the reason."""

    reason: str
    user_id: str | None
    routing_key: str
    message_id: str | None
    code: WireRejectCode = WireRejectCode.REFUSED_REPLY
    # Whom to answer with reply_rejected: the broker-vouched user_id; without one, the tenant the routing key
    # names (the broker lets only that tenant's user publish `<tenant>.<host>`); nobody for a delivery routed
    # to every host (each host would answer it).
    answer_to: str | None = None


def accept_reply(
    *, host: str, user_id: str | None, routing_key: str, body: bytes, message_id: str | None = None
) -> TenantReply:
    """Validate one delivery from the host's replies queue; raise RejectedReply (or MalformedReply) if unfit.

    The broker checks that a present `user_id` is the publisher's own user and that the routing key starts
    with it, but accepts a message without `user_id`: such a reply proves nothing about its sender.
    """
    if not user_id:
        raise RejectedReply("missing user_id: the publisher is unknown", code="missing_user_id")
    broadcast = routing_key == f"{user_id}.{BROADCAST_HOST}"
    expected_key = f"{user_id}.{host}"
    if routing_key != expected_key and not broadcast:
        raise RejectedReply(f"routing key {routing_key!r} is not {expected_key!r}", code="wrong_routing_key")
    return TenantReply(tenant=user_id, host=host, reply=parse_reply(body), message_id=message_id,
                       broadcast=broadcast)


def answer_to(*, host: str, user_id: str | None, routing_key: str) -> str | None:
    """Who hears a refusal of this delivery (RejectedDelivery.answer_to)."""
    tenant, _, to = routing_key.partition(".")
    if to == BROADCAST_HOST:
        return None  # routed to every host: each would answer it
    if user_id:
        return user_id
    return tenant if to == host and is_word(tenant) else None


def route_delivery(
    *, host: str, user_id: str | None, routing_key: str, body: bytes, message_id: str | None
) -> TenantReply | RejectedDelivery:
    """Where one delivery goes: an accepted reply, or the rejection to report; never raises for bad input."""
    try:
        return accept_reply(
            host=host, user_id=user_id, routing_key=routing_key, body=body, message_id=message_id
        )
    except RejectedReply as exc:
        return RejectedDelivery(
            reason=exc.reason, user_id=user_id, routing_key=routing_key, message_id=message_id,
            code=WireRejectCode(exc.code),
            answer_to=answer_to(host=host, user_id=user_id, routing_key=routing_key),
        )
