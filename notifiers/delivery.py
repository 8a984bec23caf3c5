"""OutboxPublisher: the NoticePublisher's interface over the outbox and an in-order delivery thread."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from datetime import datetime

import structlog
import tenacity

from notifiers.errors import InvalidName, NotifierClosed, UnroutableNotice
from notifiers.messages import Notice, notice_route
from notifiers.outbox import Outbox, OutboxEntry, Sender
from notifiers.topology import check_word

_log = structlog.get_logger(__name__)
_BATCH = 64
_IDLE_SECONDS = 1.0  # an idle delivery thread looks at the outbox this often even without a wake-up


class OutboxPublisher:
    """publish() stores the notice and returns at once; the future resolves when the broker confirmed it.

    While the broker is down the service keeps going: notices accumulate in the outbox and go out in order
    when it returns. Notices stored by an earlier run go out first, after start().
    """

    def __init__(
        self,
        sender: Sender,
        outbox: Outbox,
        *,
        confirm_timeout_seconds: float,
        reconnect_initial_seconds: float = 0.5,
        reconnect_max_seconds: float = 30.0,
    ) -> None:
        self._sender = sender
        self._outbox = outbox
        self._timeout_seconds = confirm_timeout_seconds + 5.0  # the sender's own limit fires first
        self._wait = tenacity.wait_exponential_jitter(
            multiplier=reconnect_initial_seconds, max=reconnect_max_seconds
        )
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[datetime]] = {}
        self._thread: threading.Thread | None = None
        self._declared: set[str] = set()  # delivery thread only

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Connect (raises BrokerUnavailable if the broker cannot be reached now), then deliver."""
        if self._thread is not None or self._stopping.is_set():
            raise NotifierClosed("an OutboxPublisher can be started once")
        self._sender.start(timeout_seconds=timeout_seconds)
        self._thread = threading.Thread(target=self._run, name="notice-outbox", daemon=True)
        self._thread.start()
        backlog = self._outbox.count()
        if backlog:
            _log.info("outbox_backlog_found", notice_count=backlog)

    def close(self, *, timeout_seconds: float = 30.0) -> None:
        """Stop delivering (undelivered notices stay stored for the next run) and close the connection."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_seconds)
        self._sender.close(timeout_seconds=timeout_seconds)
        self._outbox.close()

    def ensure_tenant_queue(self, tenant: str) -> Future[None]:
        """Declare the tenant's queue now (delivery declares it again before the tenant's first notice)."""
        return self._sender.ensure_tenant_queue(check_word("tenant", tenant))

    def publish(self, tenant: str, host: str, notice: Notice) -> Future[datetime]:
        """Store `notice` (raises OutboxError if it cannot be stored); the future holds the confirm time."""
        check_word("tenant", tenant), check_word("host", host)  # refused now, not retried forever later
        if notice_route(notice) != (tenant, host):
            route = notice_route(notice)
            raise InvalidName(f"notice {notice.event_id} is about {route}, not {(tenant, host)}")
        if self._stopping.is_set():
            raise NotifierClosed("the OutboxPublisher is closed")
        future: Future[datetime] = Future()
        with self._lock:  # the entry must be findable in _waiting before the thread can deliver it
            entry = self._outbox.put(notice)
            self._waiting[entry.seq] = future
        _log.info("notice_stored", tenant=tenant, host=host, notice_type=notice.type,
                  event_id=notice.event_id, incarnation=entry.seq,
                  outbox_depth=self._outbox.count())  # fmt: skip
        self._wake.set()
        return future

    def backlog(self) -> int:
        """Notices stored and not yet confirmed by the broker."""
        return self._outbox.count()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            entries = self._outbox.oldest(_BATCH)
            if not entries:
                self._wake.wait(_IDLE_SECONDS)
                continue
            for entry in entries:
                if not self._deliver_with_backoff(entry):
                    return

    def _deliver_with_backoff(self, entry: OutboxEntry) -> bool:
        """True once delivered; False if the publisher is closing first."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Exception),
            wait=self._wait,
            stop=tenacity.stop_when_event_set(self._stopping),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            retrying(self._deliver, entry)
        except Exception:  # only when closing: the notice stays stored for the next run
            return False
        return True

    def _deliver(self, entry: OutboxEntry) -> None:
        if entry.tenant not in self._declared:
            self._sender.ensure_tenant_queue(entry.tenant).result(timeout=self._timeout_seconds)
            self._declared.add(entry.tenant)
        try:
            confirmed_at = self._sender.publish_body(
                tenant=entry.tenant, host=entry.host, notice_type=entry.notice_type, event_id=entry.event_id,
                body=entry.body,
            ).result(timeout=self._timeout_seconds)  # fmt: skip
        except UnroutableNotice:
            self._declared.discard(entry.tenant)  # someone deleted the queue: declare it again, then retry
            raise
        self._outbox.delete(entry.seq)
        # The metrics read the outbox's depth here, and each notice's latency since its notice_stored.
        _log.debug("notice_delivered", notice_type=entry.notice_type, event_id=entry.event_id,
                   outbox_depth=self._outbox.count())  # fmt: skip
        with self._lock:
            future = self._waiting.pop(entry.seq, None)
        if future is not None and future.set_running_or_notify_cancel():
            future.set_result(confirmed_at)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # close() cuts a backoff short

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        _log.warning("notice_delivery_retry", attempt=state.attempt_number, wait_seconds=round(wait, 2),
                     error=repr(error), backlog=self._outbox.count())  # fmt: skip
