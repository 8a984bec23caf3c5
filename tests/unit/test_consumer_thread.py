"""The shared consumer loop with hand-written fake connections: a channel the broker closed, a handler's bug
and a lost connection each end in a fresh connection, and every connection is closed; close() wakes a loop
waiting for deliveries; and queue_consumers reads a queue's state from a passive declare's answer."""

from __future__ import annotations

import threading
import time
from typing import Any

import pika.exceptions
import pytest
from structlog.testing import capture_logs

from notifiers.connection import queue_consumers
from notifiers.consumer_thread import ConsumerThread
from notifiers.errors import BrokerUnavailable, NotifierClosed


class _Channel:
    def __init__(self) -> None:
        self.is_closed = False


class _Connection:
    """Runs `trouble` once, on its first poll: what the broker or a handler does to this connection."""

    def __init__(self, trouble: str | None) -> None:
        self.channel = _Channel()
        self.closed = False
        self._trouble = trouble

    def process_data_events(self, time_limit: float | None) -> None:
        assert time_limit is None  # the loop waits for events, close() wakes it
        trouble, self._trouble = self._trouble, None
        if trouble == "channel closed by the broker":
            self.channel.is_closed = True
        elif trouble == "connection lost":
            raise pika.exceptions.StreamLostError("gone")
        elif trouble == "handler bug":
            raise KeyError("a bug in on_message")
        time.sleep(0.01)

    def add_callback_threadsafe(self, callback: Any) -> None: ...

    def close(self) -> None:
        self.closed = True


class _QuietConnection:
    """Nothing is delivered: an unlimited wait lasts until add_callback_threadsafe wakes it."""

    def __init__(self) -> None:
        self.channel = _Channel()
        self.waiting = threading.Event()
        self._woken = threading.Event()
        self.closed = False

    def process_data_events(self, time_limit: float | None) -> None:
        self.waiting.set()
        assert self._woken.wait(None if time_limit is None else time_limit + 10)

    def add_callback_threadsafe(self, callback: Any) -> None:
        self._woken.set()

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("trouble", ["channel closed by the broker", "connection lost", "handler bug"])
def test_trouble_on_a_connection_ends_in_a_fresh_one_and_the_old_one_closed(trouble: str) -> None:
    opened: list[_Connection] = []
    second = threading.Event()

    def open_connection() -> tuple[Any, Any]:
        connection = _Connection(trouble if not opened else None)
        opened.append(connection)
        if len(opened) == 2:
            second.set()
        return connection, connection.channel

    loop = ConsumerThread(open_connection=open_connection, role="replies", host="hv1")
    with capture_logs() as logs:
        loop.start()
        assert second.wait(10)
        loop.close()
    assert [c.closed for c in opened] == [True, True]
    expected = "consumer_failed" if trouble == "handler bug" else "broker_connection_lost"
    troubles = [e["event"] for e in logs if e["event"] in ("consumer_failed", "broker_connection_lost")]
    assert troubles == [expected]


def test_close_wakes_a_consumer_waiting_for_deliveries_at_once() -> None:
    connection = _QuietConnection()
    loop = ConsumerThread(open_connection=lambda: (connection, connection.channel), role="replies",
                          host="hv1")  # fmt: skip
    loop.start()
    assert connection.waiting.wait(10)
    began = time.monotonic()
    loop.close(timeout_seconds=10)
    assert connection.closed and time.monotonic() - began < 5


def test_a_first_connect_that_fails_reaches_start_and_a_loop_starts_once() -> None:
    def refuse() -> tuple[Any, Any]:
        raise OSError("connection refused")

    loop = ConsumerThread(open_connection=refuse, role="digests", host="hv1")
    with pytest.raises(BrokerUnavailable, match="digests consumer for hv1 cannot start"):
        loop.start()
    with pytest.raises(NotifierClosed):
        loop.start()


class _DeclaringConnection:
    def __init__(self, answer: int | str) -> None:
        self._answer = answer
        self.channels = 0

    def channel(self) -> _DeclaringConnection:
        self.channels += 1
        return self

    def queue_declare(self, *, queue: str, passive: bool) -> Any:
        assert passive
        if isinstance(self._answer, int):
            raise pika.exceptions.ChannelClosedByBroker(self._answer, "refused")
        return type("Ok", (), {"method": type("M", (), {"consumer_count": int(self._answer)})})()

    def close(self) -> None: ...


@pytest.mark.parametrize(("answer", "expected"), [("3", 3), ("0", 0), (404, None), (405, 1)])
def test_queue_consumers_reads_the_passive_declares_answer(answer: int | str, expected: int | None) -> None:
    assert queue_consumers(_DeclaringConnection(answer), "q") == expected


def test_queue_consumers_passes_other_refusals_on() -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        queue_consumers(_DeclaringConnection(403), "q")
