"""The blast-radius guards' state on the shared broker (placement/guards.py decides over it): the admin's
cloud-wide pause, the evacuation permits, and the lock under which a host decides to start.

- **Pause:** a durable queue `<exchange>.paused` exists while evacuations are paused; it holds one
  persistent message saying who paused and why. `evacuator pause` declares it, `evacuator resume` deletes
  it, and a daemon looks (a passive declare) before every move it starts: so a pause stops new moves within
  a poll, outlives every daemon's restart, and needs no one to be up when it is flipped.
- **Permits:** holding permit k is being the exclusive consumer of `<exchange>.evacuation-slot.<k>`, as
  with the cloud-wide transfer slots (cloud_slots.py): a host that dies loses its connection and with it
  its permit.
- **Lock:** `<exchange>.guard-lock.1`, the same kind of queue, held only while a host checks the guards and
  takes its permit, so two hosts never both see "one slot left" or "long enough since the last start".
Every queue lives in the peers vhost, where only hosts' users may go (host_users.py grants them).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
import structlog

from evacuator.peers.cloud_slots import BrokerClusterSlots
from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory

log = structlog.get_logger(__name__)

NOT_FOUND = 404  # the AMQP reply code of a passive declare of a queue that does not exist
_POLL_SECONDS = 0.25
_JOIN_TIMEOUT_SECONDS = 30.0


def paused_queue(exchange: str) -> str:
    return f"{exchange}.paused"


def permit_prefix(exchange: str) -> str:
    return f"{exchange}.evacuation-slot"


def lock_prefix(exchange: str) -> str:
    return f"{exchange}.guard-lock"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """Who paused evacuations cloud-wide, when and why (as `evacuator pause` recorded it)."""

    by: str
    at: str
    reason: str


class Permit:
    """One held evacuation permit: its connection, serviced on a thread of its own until released."""

    def __init__(self, connection: Any, index: int) -> None:
        self.index = index
        self._connection = connection
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"evacuation-permit-{index}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._released.is_set():
                self._connection.process_data_events(time_limit=_POLL_SECONDS)
        except Exception as exc:  # a lost connection loses the permit: the broker frees it for another host
            log.warning("evacuation_permit_lost", slot=self.index, error=repr(exc)[:300])
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                self._connection.close()

    def release(self) -> None:
        self._released.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_JOIN_TIMEOUT_SECONDS)


class BrokerGuardState:
    """The pause flag, the permits and the lock, on the peers vhost of the broker `connect` reaches."""

    def __init__(self, connect: ConnectionFactory, *, exchange: str) -> None:
        self._connect = connect
        self._exchange = exchange

    def paused(self) -> Pause | None:
        """The pause in force, None when evacuations may go on. Raises on a broker that cannot be reached."""
        connection = self._connect()
        try:
            channel = connection.channel()
            if not _queue_exists(channel, paused_queue(self._exchange)):
                return None
            method, _properties, body = channel.basic_get(queue=paused_queue(self._exchange), auto_ack=False)
            if method is None:
                return Pause(by="unknown", at="unknown", reason="(no reason recorded)")
            channel.basic_nack(delivery_tag=method.delivery_tag, requeue=True)
            return _pause_of(body)
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()

    def pause(self, *, by: str, at: datetime, reason: str) -> None:
        """Pause evacuations cloud-wide (idempotent: a second pause replaces the recorded reason)."""
        connection = self._connect()
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            queue = paused_queue(self._exchange)
            channel.queue_declare(queue=queue, durable=True, arguments={"x-max-length": 1})
            body = json.dumps({"by": by, "at": at.isoformat(), "reason": reason[:500]}).encode()
            channel.basic_publish(exchange="", routing_key=queue, body=body, properties=pika.BasicProperties(
                delivery_mode=2, content_type="application/json"))
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()

    def resume(self) -> bool:
        """Lift the pause; False when none was in force."""
        connection = self._connect()
        try:
            channel = connection.channel()
            if not _queue_exists(channel, paused_queue(self._exchange)):
                return False
            channel.queue_delete(queue=paused_queue(self._exchange))
            return True
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()

    def try_permit(self, slots: int) -> Permit | None:
        """One of `slots` evacuation permits, held until released; None when every one is held."""
        return self._try_hold(permit_prefix(self._exchange), slots)

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """The guards' lock, if free (True while held); False at once when another host holds it."""
        held = self._try_hold(lock_prefix(self._exchange), 1)
        try:
            yield held is not None
        finally:
            if held is not None:
                held.release()

    def _try_hold(self, prefix: str, total: int) -> Permit | None:
        connection = self._connect()
        try:
            index = BrokerClusterSlots(self._connect, prefix=prefix, total=total).try_take(connection)
        except BaseException:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
            raise
        if index is None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
            return None
        return Permit(connection, index)


def _queue_exists(channel: Any, queue: str) -> bool:
    """Whether `queue` exists (a passive declare: a missing queue closes `channel`, not used again)."""
    try:
        channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return False
        raise
    return True


def _pause_of(body: bytes) -> Pause:
    try:
        data = json.loads(body)
        return Pause(by=str(data["by"])[:200], at=str(data["at"])[:64], reason=str(data["reason"])[:500])
    except (ValueError, KeyError, TypeError):
        return Pause(by="unknown", at="unknown", reason="(unreadable pause record)")
