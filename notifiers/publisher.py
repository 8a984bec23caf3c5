"""NoticePublisher: publishes tenant notices with confirms from one thread that owns its own connection."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions
import structlog

from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory, blocking_connection_factory
from notifiers.errors import (
    BrokerUnavailable,
    InvalidName,
    NoticeNacked,
    NotifierClosed,
    NotifierError,
    UnroutableNotice,
)
from notifiers.messages import Notice, encode, notice_route
from notifiers.settings import BrokerSettings
from notifiers.topology import Topology, check_word, notice_routing_key

_log = structlog.get_logger(__name__)
_IDLE_POLL_SECONDS = 1.0  # how often an idle publisher services heartbeats
# The AMQP reply code with which the broker refuses to declare a queue that exists with other arguments.
_PRECONDITION_FAILED = 406


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    """Work for the publisher thread: `run(channel)` and the future that receives its result."""

    name: str
    run: Callable[[Any], Any]
    future: Future[Any]
    context: dict[str, str]


_STOP = object()


class NoticePublisher:
    """Publishes notices persistently, mandatory and confirmed; safe to call from any thread."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        clock: Callable[[], datetime] = _utc_now,
        connect: ConnectionFactory | None = None,
    ) -> None:
        self._settings = settings
        self._topology = Topology.from_settings(settings)
        self._clock = clock
        self._connect = connect or blocking_connection_factory(settings, connection_name="evacuator-notices")
        self._jobs: queue.Queue[_Job | object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        # Owned by the publisher thread only.
        self._connection: Any = None
        self._channel: Any = None
        self._tenants: set[str] = set()

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Start the thread, connect and declare the exchanges; raise BrokerUnavailable if that fails."""
        with self._lock:
            if self._closed or self._thread is not None:
                raise NotifierClosed("a NoticePublisher can be started once")
            self._thread = threading.Thread(target=self._run, name="notice-publisher", daemon=True)
            self._thread.start()
        try:
            self._submit("connect", lambda channel: None).result(timeout=timeout_seconds)
        except BaseException:
            self.close()
            raise

    def close(self, *, timeout_seconds: float = 30.0) -> None:
        """Finish the jobs already submitted, close the connection and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._jobs.put(_STOP)
        if thread is not None:
            thread.join(timeout=timeout_seconds)

    def ensure_tenant_queue(self, tenant: str) -> Future[None]:
        """Declare the tenant's durable notices queue (again after every reconnect)."""
        check_word("tenant", tenant)

        def declare(channel: Any) -> None:
            self._declare_tenant_queue(tenant)
            self._tenants.add(tenant)
            _log.info("tenant_queue_declared", tenant=tenant)

        return self._submit("ensure_tenant_queue", declare, tenant=tenant)

    def publish(self, tenant: str, host: str, notice: Notice) -> Future[datetime]:
        """Publish `notice`; the future holds the broker's confirm time (UTC) or a NotifierError."""
        if notice_route(notice) != (tenant, host):
            raise InvalidName(
                f"notice {notice.event_id} is about {notice_route(notice)}, not {(tenant, host)}"
            )
        return self.publish_body(
            tenant=tenant, host=host, notice_type=notice.type, event_id=notice.event_id, body=encode(notice)
        )

    def publish_body(
        self, *, tenant: str, host: str, notice_type: str, event_id: str, body: bytes
    ) -> Future[datetime]:
        """Publish an already encoded notice (the outbox stores bodies); same guarantees as publish()."""
        routing_key = notice_routing_key(tenant, host, notice_type)

        def send(channel: Any) -> datetime:
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=event_id,
                type=notice_type,
                app_id="evacuator",
                timestamp=int(self._clock().timestamp()),
            )
            channel.basic_publish(
                exchange=self._topology.notices_exchange,
                routing_key=routing_key,
                body=body,
                properties=properties,
                mandatory=True,
            )
            _log.info(
                "notice_confirmed", tenant=tenant, host=host, notice_type=notice_type, event_id=event_id
            )
            return self._clock()

        return self._submit("publish", send, tenant=tenant, host=host, event_id=event_id)

    def _submit(self, name: str, run: Callable[[Any], Any], **context: str) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed or self._thread is None:
                raise NotifierClosed("the NoticePublisher is not running")
            self._jobs.put(_Job(name=name, run=run, future=future, context=context))
        return future

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_POLL_SECONDS)
            except queue.Empty:
                self._service_connection()
                continue
            if job is _STOP:
                break
            if isinstance(job, _Job) and job.future.set_running_or_notify_cancel():
                self._execute(job)
        self._disconnect()

    def _execute(self, job: _Job) -> None:
        try:
            channel = self._ensure_channel()
            job.future.set_result(job.run(channel))
        except NotifierError as exc:
            job.future.set_exception(exc)
        except pika.exceptions.UnroutableError as exc:
            job.future.set_exception(UnroutableNotice(f"no queue is bound for {job.context}"))
            _log.warning("notice_unroutable", error=repr(exc), **job.context)
        except pika.exceptions.NackError as exc:
            # A channel that first published to a quorum queue while its leader was being replaced (its node
            # died) is nacked for as long as it lives (RabbitMQ 3.10, docs/broker-cluster.md): the retry
            # takes a new channel.
            self._discard_channel()
            job.future.set_exception(NoticeNacked(f"the broker nacked {job.context}"))
            _log.warning("notice_nacked", error=repr(exc), **job.context)
        except CONNECTION_ERRORS as exc:
            self._drop_connection(exc)
            job.future.set_exception(BrokerUnavailable(f"{job.name} {job.context} failed: {exc!r}"))
        except Exception as exc:  # a bug must fail the caller's future, not kill the thread silently
            _log.exception("publisher_job_failed", job=job.name, **job.context)
            job.future.set_exception(exc)

    def _ensure_channel(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        connecting = self._connection is None or not self._connection.is_open
        if connecting:
            self._disconnect()
            self._connection = self._connect()
        channel = self._connection.channel()
        channel.confirm_delivery()
        self._topology.declare_exchanges(channel)
        for tenant in sorted(self._tenants):
            self._declare_tenant_queue(tenant)
        self._channel = channel
        if connecting:
            _log.info("broker_connected", role="publisher", url=self._settings.redacted_url)
        return channel

    def _declare_tenant_queue(self, tenant: str) -> None:
        """Declare on a channel of its own, closed after: the broker's refusal closes the channel it comes
        on, which must not be the publishing one. A queue of the other type (or other arguments) is used as
        it is, with a warning: refusing it would hold every later notice back (they go out in order)."""
        channel = self._connection.channel()
        try:
            self._topology.declare_tenant_queue(channel, tenant)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _PRECONDITION_FAILED:
                raise
            channel = self._connection.channel()
            self._topology.declare_tenant_queue(channel, tenant, passive=True)
            _log.warning(
                "tenant_queue_inequivalent", tenant=tenant, detail=exc.reply_text,
                wanted=self._topology.queue_type,
                action="used as it is; to give it broker.queue_type see docs/broker-cluster.md, 'Upgrading'",
            )  # fmt: skip
        finally:
            if channel.is_open:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    channel.close()

    def _discard_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            with contextlib.suppress(*CONNECTION_ERRORS):
                channel.close()

    def _service_connection(self) -> None:
        """Answer heartbeats while idle, and notice a broken connection before the next publish needs it."""
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(time_limit=0)
        except CONNECTION_ERRORS as exc:
            self._drop_connection(exc)

    def _drop_connection(self, exc: BaseException) -> None:
        _log.warning("broker_connection_lost", role="publisher", error=repr(exc))
        self._disconnect()

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(*CONNECTION_ERRORS):  # already broken: nothing left to close cleanly
                connection.close()
