"""Creating and removing a tenant's broker user (rabbitmqctl) with isolating permissions, and its queue."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import structlog

from notifiers.connection import CONNECTION_ERRORS, blocking_connection_factory
from notifiers.errors import BrokerUnavailable, ProvisioningRefused
from notifiers.rabbitmqctl import UserOutcome, ensure_user, list_user_tags, run_ctl
from notifiers.settings import BrokerSettings
from notifiers.topology import Topology, check_word, tenant_queue

_log = structlog.get_logger(__name__)


# The tag that marks a broker user as a tenant `provision_tenant` made (hosts' users are `host.<name>`, tagged
# `evacuator-host`); a user without it is somebody else's, and is never taken over or deleted.
TENANT_TAG = "evacuator-tenant"

TenantOutcome = UserOutcome  # what provisioning did to the user (notifiers.rabbitmqctl)


def provision_tenant(
    tenant: str,
    password: str,
    *,
    vhost: str = "/",
    notices_exchange: str = "evacuator.notices",
    replies_exchange: str = "evacuator.replies",
    rabbitmqctl: Sequence[str] = ("rabbitmqctl",),
    reset_password: bool = False,
    reserved_users: Collection[str] = (),
) -> TenantOutcome:
    """Create the tenant's user, tagged TENANT_TAG; it may only read its queue and publish its own replies.

    A user that exists is used only if it bears the tag (a tenant made here); it is given exactly that tag
    and its permissions again, and its password only with `reset_password`. A user without the tag (an
    administrator, the service's or a host's user) and a name in `reserved_users` (the service's own user)
    are refused with ProvisioningRefused, and left as they are. The tenant may configure nothing: the service
    declares and binds its notices queue.
    """
    check_word("tenant", tenant)
    if tenant_queue(tenant) in (notices_exchange, replies_exchange):
        raise ProvisioningRefused(f"tenant name {tenant!r} collides with an exchange name")
    if tenant in reserved_users:
        raise ProvisioningRefused(f"{tenant!r} is the broker user the service connects as, not a tenant")
    # Exactly the tenant tag: any other (administrator, monitoring, ...) is cleared.
    outcome = ensure_user(tenant, password, tag=TENANT_TAG, check=_check_is_tenant, rabbitmqctl=rabbitmqctl,
                          reset_password=reset_password)
    run_ctl(
        rabbitmqctl,
        [
            "set_permissions", "-p", vhost, tenant,
            "^$",
            f"^{re.escape(replies_exchange)}$",
            f"^{re.escape(tenant_queue(tenant))}$",
        ],
    )  # fmt: skip
    # Pins the routing keys the tenant may publish on the replies exchange to `<tenant>.<host>`.
    run_ctl(
        rabbitmqctl,
        [
            "set_topic_permissions", "-p", vhost, tenant, replies_exchange,
            f"^{re.escape(tenant)}\\.[^.]+$",
            "^$",
        ],
    )  # fmt: skip
    _log.info("tenant_provisioned", tenant=tenant, vhost=vhost, outcome=str(outcome))
    return outcome


def remove_tenant(tenant: str, *, rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> None:
    """Delete the tenant's user (and so its permissions); idempotent. Its queue is the service's to delete.

    A user without TENANT_TAG is not a tenant made here: refused (ProvisioningRefused), left as it is."""
    check_word("tenant", tenant)
    tags = list_user_tags(rabbitmqctl).get(tenant)
    if tags is not None:
        _check_is_tenant(tenant, tags)
        run_ctl(rabbitmqctl, ["delete_user", tenant], ok_if="does not exist")
    _log.info("tenant_removed", tenant=tenant, existed=tags is not None)


def _check_is_tenant(tenant: str, tags: frozenset[str]) -> None:
    if TENANT_TAG not in tags:
        shown = ", ".join(sorted(tags)) or "none"
        raise ProvisioningRefused(
            f"broker user {tenant!r} exists and is not a tenant (tags: {shown}; a tenant bears "
            f"{TENANT_TAG!r}): left as it is. Choose another name; if it is a tenant made by an older "
            f"version, adopt it with `rabbitmqctl set_user_tags {tenant} {TENANT_TAG}`"
        )


def declare_tenant_queue(settings: BrokerSettings, tenant: str) -> str:
    """Declare the exchanges and the tenant's bound notices queue as the service's user; returns the queue.

    Done at provisioning so the tenant can subscribe at once, before its first notice.
    """
    with _service_channel(settings) as channel:
        topology = Topology.from_settings(settings)
        topology.declare_exchanges(channel)
        queue = topology.declare_tenant_queue(channel, check_word("tenant", tenant))
    _log.info("tenant_queue_declared", tenant=tenant, queue=queue)
    return queue


def delete_tenant_queue(settings: BrokerSettings, tenant: str) -> None:
    """Delete the tenant's notices queue and whatever it still holds; idempotent."""
    with _service_channel(settings) as channel:
        channel.queue_delete(queue=tenant_queue(check_word("tenant", tenant)))
    _log.info("tenant_queue_deleted", tenant=tenant)


@contextlib.contextmanager
def _service_channel(settings: BrokerSettings) -> Iterator[Any]:
    connection = blocking_connection_factory(settings, connection_name="evacuator-admin")()
    try:
        yield connection.channel()
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"{settings.redacted_url}: {exc!r}") from exc
    finally:
        with contextlib.suppress(*CONNECTION_ERRORS):
            connection.close()
