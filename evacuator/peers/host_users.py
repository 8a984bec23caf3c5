"""Each host's own broker user (`host.<name>`, tagged evacuator-host) and the permissions that confine it.

A host's daemon may, in the tenants' vhost, declare the two exchanges, its own replies queue and the tenants'
notices queues, publish notices only under its own name (`<tenant>.<host>.<type>`) and read only its own
replies; in the peers vhost, bind only its own request key (`digest.<host>`), declare only its own request and
"alive" queues, server-named reply queues and the shared slot queues, and publish requests to any host and
replies through the default exchange, and publish only its own host's state (`state.<host>`) while it
reads every host's (`state.*`). The broker enforces all of it, and `user_id` on every message between
daemons (checked by the broker against the connection's user) names the sender: so a host can neither read
another's requests nor answer in its name. docs/moves.md, "Host identities", has the table and the reasons.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from notifiers.errors import ProvisioningRefused
from notifiers.rabbitmqctl import UserOutcome, ensure_user, list_user_tags, run_ctl
from notifiers.topology import BROADCAST_HOST, check_word, host_replies_queue

_log = structlog.get_logger(__name__)

HOST_TAG = "evacuator-host"
HOST_USER_PREFIX = "host."

# A tenant's name, a routing key's word (notifiers.topology): tenants' queues are `<tenant>.notices`.
_TENANT = "[A-Za-z0-9][A-Za-z0-9_-]*"
_SERVER_NAMED = r"amq\.gen-.*"  # exclusive reply queues: only their own connection may use them


def host_user(name: str) -> str:
    """The broker user of host `name`'s daemon."""
    return f"{HOST_USER_PREFIX}{check_word('host', name)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """`rabbitmqctl set_permissions`: regular expressions over resource names, anchored."""

    vhost: str
    configure: str
    write: str
    read: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicGrant:
    """`rabbitmqctl set_topic_permissions`: over routing keys published (write) and bound (read)."""

    vhost: str
    exchange: str
    write: str
    read: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostGrants:
    grants: tuple[Grant, ...]
    topics: tuple[TopicGrant, ...]


def host_grants(
    name: str,
    *,
    vhost: str,
    peers_vhost: str,
    notices_exchange: str,
    replies_exchange: str,
    peers_exchange: str,
) -> HostGrants:
    """The permissions of host `name`'s user; one Grant per vhost (the peers' and tenants' may be one)."""
    check_word("host", name)
    host, notices, replies, peers = (re.escape(x) for x in (name, notices_exchange, replies_exchange,
                                                             peers_exchange))  # fmt: skip
    own_replies = re.escape(host_replies_queue(name, replies_exchange=replies_exchange))
    tenant_queues = rf"{_TENANT}\.notices"
    # A binding needs write on its queue and read on its exchange.
    tenants = _Access(
        configure=[notices, replies, own_replies, tenant_queues],
        write=[notices, own_replies, tenant_queues],
        read=[notices, replies, own_replies],
    )
    own_peer_queues = [rf"{peers}\.digest\.{host}", rf"{peers}\.alive\.{host}\..*"]
    # Transfer slots, and the blast-radius guards' permits, lock and pause flag (guard_broker.py).
    slots = rf"{peers}\.((incoming|total|evacuation)-slot\..*|guard-lock\..*|paused)"
    peers_access = _Access(
        configure=[peers, *own_peer_queues, _SERVER_NAMED, slots],
        write=[peers, *own_peer_queues, _SERVER_NAMED, slots, r"amq\.default"],
        read=[peers, *own_peer_queues, _SERVER_NAMED, slots],
    )
    grants: tuple[Grant, ...]
    if peers_vhost == vhost:
        grants = (tenants.merged(peers_access).grant(vhost),)
    else:
        grants = (tenants.grant(vhost), peers_access.grant(peers_vhost))
    topics = (
        # Notices only as this host; a tenant's queue binds `<tenant>.#`.
        TopicGrant(vhost=vhost, exchange=notices_exchange, write=rf"^[^.]+\.{host}\.[a-z_]+$",
                   read=rf"^{_TENANT}\.#$"),
        # Nothing published; bound only to replies for this host or for every host.
        TopicGrant(vhost=vhost, exchange=replies_exchange, write="^$",
                   read=rf"^\*\.({host}|{re.escape(BROADCAST_HOST)})$"),
        # Requests to any host and its own state only; bound only to its own requests and every host's states.
        TopicGrant(vhost=peers_vhost, exchange=peers_exchange, write=rf"^(digest\.[^.]+|state\.{host})$",
                   read=rf"^(digest\.{host}|state\.\*)$"),
    )  # fmt: skip
    return HostGrants(grants=grants, topics=topics)


@dataclass(frozen=True, slots=True)
class _Access:
    configure: list[str]
    write: list[str]
    read: list[str]

    def merged(self, other: _Access) -> _Access:
        return _Access(
            configure=_union(self.configure, other.configure), write=_union(self.write, other.write),
            read=_union(self.read, other.read),
        )  # fmt: skip

    def grant(self, vhost: str) -> Grant:
        return Grant(vhost=vhost, configure=_anchored(self.configure), write=_anchored(self.write),
                     read=_anchored(self.read))  # fmt: skip


def _union(first: list[str], second: list[str]) -> list[str]:
    return [*first, *(x for x in second if x not in first)]


def _anchored(alternatives: list[str]) -> str:
    return f"^({'|'.join(alternatives)})$"


HostOutcome = UserOutcome  # what provisioning did to the user (notifiers.rabbitmqctl)


def provision_host(
    name: str,
    password: str,
    *,
    grants: HostGrants,
    rabbitmqctl: Sequence[str] = ("rabbitmqctl",),
    reset_password: bool = False,
) -> HostOutcome:
    """Create host `name`'s user tagged HOST_TAG, the vhosts its grants name, and set exactly those grants.

    A user that exists is used only if it bears HOST_TAG (made here); its password is changed only with
    `reset_password`. Any other user of that name is refused with ProvisioningRefused and left as it is.
    """
    user = host_user(name)
    # Exactly the host tag: any other (administrator, monitoring, ...) is cleared.
    outcome = ensure_user(user, password, tag=HOST_TAG, check=_check_is_host, rabbitmqctl=rabbitmqctl,
                          reset_password=reset_password)
    for vhost in dict.fromkeys(grant.vhost for grant in grants.grants):
        run_ctl(rabbitmqctl, ["add_vhost", vhost], ok_if="already exists")
    for grant in grants.grants:
        run_ctl(rabbitmqctl, ["set_permissions", "-p", grant.vhost, user,
                              grant.configure, grant.write, grant.read])  # fmt: skip
    for topic in grants.topics:
        run_ctl(rabbitmqctl, ["set_topic_permissions", "-p", topic.vhost, user, topic.exchange,
                              topic.write, topic.read])  # fmt: skip
    _log.info("host_user_provisioned", host=name, user=user, outcome=str(outcome))
    return outcome


def remove_host(name: str, *, rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> bool:
    """Delete host `name`'s user (and so its permissions); idempotent; True if it existed.

    A user of that name without HOST_TAG is refused (ProvisioningRefused) and left as it is."""
    user = host_user(name)
    tags = list_user_tags(rabbitmqctl).get(user)
    if tags is not None:
        _check_is_host(user, tags)
        run_ctl(rabbitmqctl, ["delete_user", user], ok_if="does not exist")
    _log.info("host_user_removed", host=name, user=user, existed=tags is not None)
    return tags is not None


def _check_is_host(user: str, tags: frozenset[str]) -> None:
    if HOST_TAG not in tags:
        shown = ", ".join(sorted(tags)) or "none"
        raise ProvisioningRefused(
            f"broker user {user!r} exists and is not a host's (tags: {shown}; a host's bears "
            f"{HOST_TAG!r}): left as it is. Delete or rename it, or adopt it with "
            f"`rabbitmqctl set_user_tags {user} {HOST_TAG}`"
        )
