"""A consuming broker connection on a thread of its own, shared by every consumer of the service.

The first connect's failure reaches start() (so the daemon refuses to start blind, and systemd retries);
later losses reconnect with backoff; the connection is closed on every way out, because one left open after
a channel error keeps its exclusive queues and consumers until the broker notices the silence.

The thread waits on its connection with no time limit and close() wakes it (add_callback_threadsafe): a
time-limited wait costs pika a timer per call, and a timer cancelled by an earlier delivery still wakes the
thread at its deadline (pika's ioloop sleeps until the first timer on its heap, cancelled or not), so a
consumer that polled got about 1.6 wake-ups per delivery instead of 1 (bench/bench_host_view.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika.exceptions
import structlog

from notifiers.connection import CONNECTION_ERRORS
from notifiers.errors import BrokerUnavailable, NotifierClosed, NotifierError

_log = structlog.get_logger(__name__)

_RECONNECT_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ConsumerThread:
    """Runs `open_connection` (connect, declare, basic_consume; it returns the connection and the consuming
    channel) and then the connection's events until closed. `role` and `host` name it in logs and errors."""

    def __init__(self, *, open_connection: Callable[[], tuple[Any, Any]], role: str, host: str) -> None:
        self._open = open_connection
        self._role = role
        self._host = host
        self._stopping = threading.Event()
        self._ready: Future[None] = Future()
        self._thread: threading.Thread | None = None
        self._connection: Any | None = None  # the consuming thread's, only for waking it

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Connect and consume; raise BrokerUnavailable (or the NotifierError met) if the first try fails."""
        if self._thread is not None or self._stopping.is_set():
            raise NotifierClosed(f"the {self._role} consumer can be started once")
        self._thread = threading.Thread(target=self._run, name=f"{self._role}-consumer-{self._host}",
                                        daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=timeout_seconds)
        except BaseException:
            self.close()
            raise

    def close(self, *, timeout_seconds: float = 30.0) -> None:
        """Stop consuming; unacked messages go back to their queue."""
        self._stopping.set()
        # Set before looking: the thread either is seen here and woken, or sees _stopping before it waits.
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(*CONNECTION_ERRORS, pika.exceptions.ConnectionWrongStateError):
                connection.add_callback_threadsafe(lambda: None)
        if self._thread is not None:
            self._thread.join(timeout=timeout_seconds)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                connection, channel = self._open()
            except Exception as exc:
                if not self._ready.done():
                    self._ready.set_exception(exc if isinstance(exc, NotifierError) else BrokerUnavailable(
                        f"{self._role} consumer for {self._host} cannot start: {exc!r}"))
                    return
                delay = _RECONNECT_DELAYS_SECONDS[min(failures, len(_RECONNECT_DELAYS_SECONDS) - 1)]
                _log.warning("broker_reconnect_failed", role=self._role, host=self._host, error=repr(exc))
                failures += 1
                self._stopping.wait(delay)
                continue
            failures = 0
            if not self._ready.done():
                self._ready.set_result(None)
            self._connection = connection
            try:
                self._consume(connection, channel)
            finally:
                self._connection = None

    def _consume(self, connection: Any, channel: Any) -> None:
        try:
            while not self._stopping.is_set():
                # Returns after a delivery, a wake-up from close() or the broker closing the channel;
                # heartbeats are served inside it.
                connection.process_data_events(time_limit=None)
                if channel.is_closed:
                    # The broker closed only the channel (a consumer timeout, a deleted queue): pika does
                    # not raise for that, and the connection would go on consuming nothing.
                    raise pika.exceptions.ChannelClosed(0, "the consuming channel was closed")
        except CONNECTION_ERRORS as exc:
            _log.warning("broker_connection_lost", role=self._role, host=self._host, error=repr(exc))
            self._stopping.wait(_RECONNECT_DELAYS_SECONDS[0])
        except Exception:  # a handler's bug must not end consuming for good: log it and start afresh
            _log.error("consumer_failed", role=self._role, host=self._host, exc_info=True)
            self._stopping.wait(_RECONNECT_DELAYS_SECONDS[0])
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
