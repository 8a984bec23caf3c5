"""Which tenant replies a host accepts: pure rules over one delivery's broker properties and body."""

from __future__ import annotations

from dataclasses import dataclass

from notifiers.errors import RejectedReply
from notifiers.messages import Reply, parse_reply


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantReply:
    """A reply the broker vouches for: `tenant` is the authenticated broker user that published it."""

    tenant: str
    host: str
    reply: Reply
    message_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedDelivery:
    """A delivery the consumer refused (and acked, so it is not redelivered), with the reason."""

    reason: str
    user_id: str | None
    routing_key: str
    message_id: str | None
    code: str = "refused_reply"


def accept_reply(
    *, host: str, user_id: str | None, routing_key: str, body: bytes, message_id: str | None = None
) -> TenantReply:
    """Validate one delivery from the host's replies queue; raise RejectedReply (or MalformedReply) if unfit.

    The broker checks that a present `user_id` is the publisher's own user and that the routing key starts
    with it, but accepts a message without `user_id`: such a reply proves nothing about its sender.
    """
    if not user_id:
        raise RejectedReply("missing user_id: the publisher is unknown", code="missing_user_id")
    expected_key = f"{user_id}.{host}"
    if routing_key != expected_key:
        raise RejectedReply(f"routing key {routing_key!r} is not {expected_key!r}", code="wrong_routing_key")
    return TenantReply(tenant=user_id, host=host, reply=parse_reply(body), message_id=message_id)


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
            reason=exc.reason, user_id=user_id, routing_key=routing_key, message_id=message_id, code=exc.code
        )
