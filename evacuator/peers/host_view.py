"""Every host's latest state as this daemon hears it: the thread-safe view, and the subscriber that fills it
from the peers exchange (`state.*`), believing a state only from its own host's broker user."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from evacuator.peers.host_state import MAX_STATE_BYTES, STATE_BINDING, HostStateMessage, sender_refusal
from evacuator.peers.messages import PeerTrust, declare_exchange
from evacuator.placement.model import HostState
from evacuator.placement.view import Heard, supersedes, view_at
from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory
from notifiers.consumer_thread import ConsumerThread
from notifiers.topology import check_word

log = structlog.get_logger(__name__)

# States waiting in the subscriber's queue: a few per host of a large cloud. Past it the broker drops the
# oldest (its default overflow), which a newer state of the same host replaces anyway.
MAX_WAITING_STATES = 10_000


class HostView:
    """The latest state of every host heard from, safe to read and fill from any thread.
    `on_kept(heard)` runs (on the filling thread) for each state kept."""

    def __init__(self, *, stale_after_seconds: float, on_kept: Callable[[Heard], None] | None = None) -> None:
        self._stale_after_seconds = stale_after_seconds
        self._on_kept = on_kept
        self._heard: dict[str, Heard] = {}
        self._changed = threading.Condition()

    @property
    def stale_after_seconds(self) -> float:
        return self._stale_after_seconds

    def offer(self, heard: Heard) -> bool:
        """Keep `heard` if it is its host's latest (placement/view.py); True when kept."""
        with self._changed:
            known = self._heard.get(heard.host)
            if not supersedes(heard, known, stale_after_seconds=self._stale_after_seconds):
                return False
            self._heard[heard.host] = heard
            self._changed.notify_all()
        if self._on_kept is not None:
            self._on_kept(heard)
        return True

    def heard(self) -> list[Heard]:
        """Every host's latest state as received (with its sequence and when it came), by host name."""
        with self._changed:
            return sorted(self._heard.values(), key=lambda h: h.host)

    def reach_of(self, host: str) -> tuple[str, str] | None:
        """`host`'s libvirt URI and storage pool as its latest state publishes them (None: not heard, or it
        publishes none). Stale or not: placement never picks a stale host, and a move under way finishes
        where its journal says."""
        with self._changed:
            heard = self._heard.get(host)
        if heard is None or heard.libvirt_uri is None or heard.storage_pool is None:
            return None
        return heard.libvirt_uri, heard.storage_pool

    def hosts(self, now: datetime) -> list[HostState]:
        """The view for placement at `now`: a host not heard from within stale_after is unknown."""
        with self._changed:
            heard = list(self._heard.values())
        return view_at(heard, now, self._stale_after_seconds)

    def wait_for(self, hosts: Collection[str], timeout_seconds: float) -> bool:
        """Wait until a state of each of `hosts` was heard; False if the time ran out first."""
        deadline = time.monotonic() + timeout_seconds
        with self._changed:
            return self._changed.wait_for(lambda: set(hosts) <= self._heard.keys(),
                                          timeout=max(0.0, deadline - time.monotonic()))  # fmt: skip


class HostStateSubscriber:
    """Fills a HostView from the peers exchange on its own connection and thread: a server-named exclusive
    queue bound to `state.*`, so it lives and dies with this daemon's connection."""

    def __init__(self, connect: ConnectionFactory, *, trust: PeerTrust, host: str, exchange: str,
                 view: HostView, clock: Callable[[], datetime]) -> None:  # fmt: skip
        self._connect = connect
        self._trust = trust
        self._host = check_word("host", host)
        self._exchange = exchange
        self._view = view
        self._clock = clock
        self._loop = ConsumerThread(open_connection=self._open, role="host-states", host=self._host)

    @property
    def view(self) -> HostView:
        return self._view

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Consume; raise BrokerUnavailable if the first connection fails."""
        self._loop.start(timeout_seconds=timeout_seconds)

    def close(self, *, timeout_seconds: float = 30.0) -> None:
        self._loop.close(timeout_seconds=timeout_seconds)

    def _open(self) -> tuple[Any, Any]:
        connection = self._connect()
        try:
            channel = connection.channel()
            declare_exchange(channel, self._exchange)
            queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True,
                                          arguments={"x-max-length": MAX_WAITING_STATES}).method.queue
            channel.queue_bind(queue=queue, exchange=self._exchange, routing_key=STATE_BINDING)
            channel.basic_consume(queue=queue, on_message_callback=self._on_message, auto_ack=True)
        except BaseException:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
            raise
        log.info("broker_connected", role="host-states", host=self._host)
        return connection, channel

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.receive(method.routing_key, properties.user_id, body)

    def receive(self, routing_key: str, user_id: str | None, body: bytes) -> bool:
        """Check and keep one state as delivered; True when the view kept it."""
        if len(body) > MAX_STATE_BYTES:
            log.warning("host_state_dropped", host=self._host, routing_key=routing_key[:100],
                        error=f"{len(body)} bytes, more than {MAX_STATE_BYTES}")
            return False
        try:
            message = HostStateMessage.model_validate_json(body)
        except ValidationError as exc:
            log.warning("host_state_dropped", host=self._host, routing_key=routing_key[:100],
                        user_id=str(user_id)[:100], error=_first_error(exc))
            return False
        refusal = sender_refusal(self._trust, own_host=self._host, routing_key=routing_key,
                                 body_host=message.host, user_id=user_id)  # fmt: skip
        if refusal is not None:
            log.warning("host_state_refused", host=self._host, routing_key=routing_key[:100],
                        state_host=message.host, user_id=str(user_id)[:100], reason=refusal)
            return False
        return self._view.offer(message.heard(self._clock()))


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "(message)"
    return f"{where}: {error['msg']}"[:300]
