"""Creating and removing a tenant's broker user (rabbitmqctl) with isolating permissions, and its queue."""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from notifiers.connection import CONNECTION_ERRORS, blocking_connection_factory
from notifiers.errors import BrokerUnavailable, ProvisioningError
from notifiers.settings import BrokerSettings
from notifiers.topology import Topology, check_word, tenant_queue

_log = structlog.get_logger(__name__)
_TIMEOUT_SECONDS = 60.0


def provision_tenant(
    tenant: str,
    password: str,
    *,
    vhost: str = "/",
    notices_exchange: str = "evacuator.notices",
    replies_exchange: str = "evacuator.replies",
    rabbitmqctl: Sequence[str] = ("rabbitmqctl",),
) -> None:
    """Create (or re-password) the tenant's user; it may only read its queue and publish its own replies.

    Idempotent. The tenant may configure nothing: the service declares and binds its notices queue.
    """
    check_word("tenant", tenant)
    if tenant_queue(tenant) in (notices_exchange, replies_exchange):
        raise ProvisioningError(
            "provision_tenant", 2, f"tenant name {tenant!r} collides with an exchange name"
        )
    created = _run(rabbitmqctl, ["add_user", tenant], stdin=password, ok_if="already exists")
    if not created:
        _run(rabbitmqctl, ["change_password", tenant], stdin=password)
    _run(
        rabbitmqctl,
        [
            "set_permissions", "-p", vhost, tenant,
            "^$",
            f"^{re.escape(replies_exchange)}$",
            f"^{re.escape(tenant_queue(tenant))}$",
        ],
    )  # fmt: skip
    # Pins the routing keys the tenant may publish on the replies exchange to `<tenant>.<host>`.
    _run(
        rabbitmqctl,
        [
            "set_topic_permissions", "-p", vhost, tenant, replies_exchange,
            f"^{re.escape(tenant)}\\.[^.]+$",
            "^$",
        ],
    )  # fmt: skip
    _log.info("tenant_provisioned", tenant=tenant, vhost=vhost, created=created)


def remove_tenant(tenant: str, *, rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> None:
    """Delete the tenant's user (and so its permissions); idempotent. Its queue is the service's to delete."""
    check_word("tenant", tenant)
    _run(rabbitmqctl, ["delete_user", tenant], ok_if="does not exist")
    _log.info("tenant_removed", tenant=tenant)


def _run(
    rabbitmqctl: Sequence[str], arguments: list[str], *, stdin: str = "", ok_if: str | None = None
) -> bool:
    """Run one command; True if it succeeded, False if it failed with `ok_if` in its output."""
    command = [*rabbitmqctl, "--quiet", *arguments]
    shown = " ".join(command)  # passwords only ever travel on stdin, so this is safe to show
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisioningError(shown, -1, repr(exc)) from exc
    if done.returncode == 0:
        return True
    output = f"{done.stdout}\n{done.stderr}".strip()
    if ok_if is not None and ok_if in output:
        return False
    raise ProvisioningError(shown, done.returncode, output)


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
