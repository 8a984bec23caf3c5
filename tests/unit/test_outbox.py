"""The durable outbox: stored before publishing, delivered in order, kept through outages and restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notifiers.delivery import OutboxPublisher
from notifiers.errors import BrokerUnavailable, InvalidName, OutboxError
from notifiers.messages import EvacuationFailed, parse_notice
from notifiers.outbox import Outbox

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


def failed(index: int, tenant: str = "acme") -> EvacuationFailed:
    return EvacuationFailed(tenant=tenant, host="hv1", vm_uuid=VM, vm_name=f"vm-{index}", reason="r", at=T0)


class FakeSender:
    """Records what it published; `down` makes every call fail like an unreachable broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.declared: list[str] = []
        self.down = False
        self.attempts = 0
        self.lock = threading.Lock()

    def start(self, *, timeout_seconds: float = 30.0) -> None: ...
    def close(self, *, timeout_seconds: float = 30.0) -> None: ...

    def _done(self, value: object) -> Future[object]:
        future: Future[object] = Future()
        if self.down:
            future.set_exception(BrokerUnavailable("fake broker is down"))
        else:
            future.set_result(value)
        return future

    def ensure_tenant_queue(self, tenant: str) -> Future[None]:
        with self.lock:
            self.attempts += 1
            if not self.down:
                self.declared.append(tenant)
            return self._done(None)  # type: ignore[return-value]

    def publish_body(
        self, *, tenant: str, host: str, notice_type: str, event_id: str, body: bytes
    ) -> Future[datetime]:
        with self.lock:
            self.attempts += 1
            if not self.down:
                self.published.append((tenant, body))
            return self._done(T0)  # type: ignore[return-value]


def eventually(condition: Callable[[], bool], timeout_seconds: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def outbox_publisher(path: Path, sender: FakeSender) -> OutboxPublisher:
    return OutboxPublisher(
        sender, Outbox(path), confirm_timeout_seconds=1.0,
        reconnect_initial_seconds=0.01, reconnect_max_seconds=0.05,
    )  # fmt: skip


def test_notices_are_delivered_in_order_and_then_removed(tmp_path: Path) -> None:
    sender = FakeSender()
    publisher = outbox_publisher(tmp_path / "outbox.sqlite", sender)
    publisher.start()
    futures = [publisher.publish("acme", "hv1", failed(i)) for i in range(20)]
    assert [f.result(timeout=5) for f in futures] == [T0] * 20
    publisher.close()
    notices = [parse_notice(body) for _, body in sender.published]
    assert [n.vm_name for n in notices] == [f"vm-{i}" for i in range(20)]  # type: ignore[union-attr]
    incarnations = [n.incarnation for n in notices]
    assert incarnations == sorted(incarnations) and len(set(incarnations)) == 20
    assert sender.declared == ["acme"]
    assert Outbox(tmp_path / "outbox.sqlite").count() == 0


def test_while_the_broker_is_down_notices_accumulate_then_go_out_in_order(tmp_path: Path) -> None:
    sender = FakeSender()
    sender.down = True
    publisher = outbox_publisher(tmp_path / "outbox.sqlite", sender)
    publisher.start()
    futures = [publisher.publish("acme", "hv1", failed(i)) for i in range(10)]
    eventually(lambda: sender.attempts >= 3)  # retried with backoff, nothing lost meanwhile
    assert publisher.backlog() == 10 and not any(f.done() for f in futures)
    sender.down = False
    for future in futures:
        future.result(timeout=5)
    publisher.close()
    assert [parse_notice(b).vm_name for _, b in sender.published] == [f"vm-{i}" for i in range(10)]  # type: ignore[union-attr]


def test_notices_stored_by_a_previous_run_go_out_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    down = FakeSender()
    down.down = True
    first = outbox_publisher(path, down)
    first.start()
    for i in range(3):
        first.publish("acme", "hv1", failed(i))
    first.close()
    sender = FakeSender()
    second = outbox_publisher(path, sender)
    second.start()
    eventually(lambda: len(sender.published) == 3)
    fresh = second.publish("acme", "hv1", failed(3))
    fresh.result(timeout=5)
    second.close()
    notices = [parse_notice(b) for _, b in sender.published]
    assert [n.vm_name for n in notices] == ["vm-0", "vm-1", "vm-2", "vm-3"]  # type: ignore[union-attr]
    first = notices[0].incarnation
    assert [n.incarnation for n in notices] == [first, first + 1, first + 2, first + 3]


def test_incarnations_never_repeat_after_the_outbox_empties(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    first = outbox.put(failed(0))
    outbox.delete(first.seq)
    assert outbox.put(failed(1)).seq == first.seq + 1


def test_a_recreated_outbox_numbers_above_its_predecessor(tmp_path: Path) -> None:
    old = Outbox(tmp_path / "old.sqlite", clock=lambda: T0)
    last = [old.put(failed(i)).seq for i in range(1000)][-1]
    assert last == int(T0.timestamp() * 1000) + 1000
    # The state dir was wiped: a new outbox a second later still numbers above the 1,000 notices sent before
    # (it holds while a host averages under one notice per millisecond over its life).
    new = Outbox(tmp_path / "new.sqlite", clock=lambda: T0 + timedelta(seconds=1))
    assert new.put(failed(0)).seq > last
    reopened = Outbox(tmp_path / "old.sqlite", clock=lambda: T0 + timedelta(days=1))
    assert reopened.put(failed(0)).seq == last + 1  # an existing outbox keeps counting


def test_a_notice_about_another_route_is_refused(tmp_path: Path) -> None:
    publisher = outbox_publisher(tmp_path / "outbox.sqlite", FakeSender())
    with pytest.raises(InvalidName):
        publisher.publish("bravo", "hv1", failed(0))


def test_an_outbox_that_cannot_be_opened_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError, match="cannot open the notice outbox"):
        Outbox(blocker / "outbox.sqlite")
