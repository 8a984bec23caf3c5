"""Reply acceptance and routing rules (pure), and ReplyConsumer's ack, requeue and reconnect behaviour over a
fake broker."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pika.exceptions
import pytest

from notifiers.errors import BrokerUnavailable, MalformedReply, RejectedReply
from notifiers.messages import ReadyReply, encode
from notifiers.reply_acceptance import RejectedDelivery, TenantReply, accept_reply, route_delivery
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings

VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
READY = encode(ReadyReply(vm_uuid=VM))


def test_reply_with_user_id_and_matching_key_is_accepted_for_that_tenant() -> None:
    accepted = accept_reply(host="hv1", user_id="acme", routing_key="acme.hv1", body=READY, message_id="m1")
    assert accepted == TenantReply(tenant="acme", host="hv1", reply=ReadyReply(vm_uuid=VM), message_id="m1")


@pytest.mark.parametrize(
    ("user_id", "routing_key", "body", "reason"),
    [
        (None, "acme.hv1", READY, "missing user_id"),
        ("", "acme.hv1", READY, "missing user_id"),
        ("acme", "bravo.hv1", READY, "routing key 'bravo.hv1' is not 'acme.hv1'"),
        ("acme", "acme.hv2", READY, "routing key 'acme.hv2' is not 'acme.hv1'"),
        ("acme", "acme.hv1.extra", READY, "is not 'acme.hv1'"),
    ],
)
def test_reply_without_a_vouched_sender_is_rejected(
    user_id: str | None, routing_key: str, body: bytes, reason: str
) -> None:
    with pytest.raises(RejectedReply) as caught:
        accept_reply(host="hv1", user_id=user_id, routing_key=routing_key, body=body)
    assert reason in caught.value.reason


def test_reply_with_a_bad_body_is_rejected_as_malformed() -> None:
    with pytest.raises(MalformedReply, match="schema_version is 2"):
        accept_reply(host="hv1", user_id="acme", routing_key="acme.hv1", body=b'{"schema_version": 2}')


def test_missing_user_id_is_checked_before_the_body() -> None:
    with pytest.raises(RejectedReply) as caught:
        accept_reply(host="hv1", user_id=None, routing_key="acme.hv1", body=b"garbage")
    assert not isinstance(caught.value, MalformedReply)


def test_routing_hands_an_accepted_reply_on() -> None:
    routed = route_delivery(host="hv1", user_id="acme", routing_key="acme.hv1", body=READY, message_id="m1")
    assert routed == TenantReply(tenant="acme", host="hv1", reply=ReadyReply(vm_uuid=VM), message_id="m1")


@pytest.mark.parametrize(
    ("user_id", "routing_key", "body", "code", "reason"),
    [
        (None, "acme.hv1", READY, "missing_user_id", "missing user_id"),
        ("acme", "acme.hv2", READY, "wrong_routing_key", "is not 'acme.hv1'"),
        ("acme", "acme.hv1", b"\x00", "malformed_reply", "not UTF-8 JSON"),
    ],
)
def test_routing_turns_every_refusal_into_a_rejected_delivery_with_its_code(
    user_id: str | None, routing_key: str, body: bytes, code: str, reason: str
) -> None:
    routed = route_delivery(host="hv1", user_id=user_id, routing_key=routing_key, body=body, message_id="m7")
    assert isinstance(routed, RejectedDelivery) and reason in routed.reason
    assert (routed.code, routed.user_id, routed.routing_key, routed.message_id) == (
        code, user_id, routing_key, "m7"
    )


def test_the_acceptance_rules_import_no_broker_client() -> None:
    probe = "import sys, notifiers.reply_acceptance; sys.exit('pika' in sys.modules and 'pika is imported')"
    result = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


# --- ReplyConsumer over a fake connection -----------------------------------------------------------------


@dataclass
class FakeBroker:
    """One replies queue; records acks and nacks; can refuse connections or break one."""

    pending: collections.deque[tuple[int, bool, bytes, str | None, str]] = field(
        default_factory=collections.deque
    )
    acked: list[int] = field(default_factory=list)
    nacked: list[tuple[int, bool]] = field(default_factory=list)
    connections: int = 0
    refuse_connections: int = 0
    break_next_poll: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_tag: int = 1

    def deliver(self, body: bytes, *, user_id: str | None = "acme", routing_key: str = "acme.hv1") -> int:
        with self.lock:
            tag, self.next_tag = self.next_tag, self.next_tag + 1
            self.pending.append((tag, False, body, user_id, routing_key))
            return tag

    def connect(self) -> FakeConnection:
        with self.lock:
            self.connections += 1
            if self.refuse_connections:
                self.refuse_connections -= 1
                raise BrokerUnavailable("fake broker refuses connections")
        return FakeConnection(self)


class FakeChannel:
    is_closed = False

    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker
        self.on_message: Callable[..., None] | None = None
        self.unacked: dict[int, tuple[int, bool, bytes, str | None, str]] = {}

    def exchange_declare(self, **_: Any) -> None: ...
    def queue_declare(self, **_: Any) -> None: ...
    def queue_bind(self, **_: Any) -> None: ...
    def basic_qos(self, **_: Any) -> None: ...

    def basic_consume(self, *, queue: str, on_message_callback: Callable[..., None]) -> None:
        assert queue == "evacuator.replies.hv1"
        self.on_message = on_message_callback

    def basic_ack(self, *, delivery_tag: int) -> None:
        self.unacked.pop(delivery_tag)
        self._broker.acked.append(delivery_tag)

    def basic_nack(self, *, delivery_tag: int, requeue: bool) -> None:
        tag, _, body, user_id, key = self.unacked.pop(delivery_tag)
        self._broker.nacked.append((delivery_tag, requeue))
        if requeue:
            with self._broker.lock:
                self._broker.pending.appendleft((tag, True, body, user_id, key))


class FakeConnection:
    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker
        self._channel = FakeChannel(broker)

    def channel(self) -> FakeChannel:
        return self._channel

    def process_data_events(self, *, time_limit: float | None) -> None:
        with self._broker.lock:
            if self._broker.break_next_poll:
                self._broker.break_next_poll = False
                raise pika.exceptions.StreamLostError("fake connection lost")
            message = self._broker.pending.popleft() if self._broker.pending else None
        if message is None:
            time.sleep(0.01 if time_limit is None else min(time_limit, 0.01))
            return
        tag, redelivered, body, user_id, key = message
        self._channel.unacked[tag] = message
        method = SimpleNamespace(delivery_tag=tag, redelivered=redelivered, routing_key=key)
        properties = SimpleNamespace(user_id=user_id, message_id=f"m{tag}")
        assert self._channel.on_message is not None
        self._channel.on_message(self._channel, method, properties, body)

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


def eventually(condition: Callable[[], bool], timeout_seconds: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@dataclass
class Recorder:
    replies: list[TenantReply] = field(default_factory=list)
    rejected: list[RejectedDelivery] = field(default_factory=list)
    failures_left: int = 0

    def on_reply(self, reply: TenantReply) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("service hiccup")
        self.replies.append(reply)


SETTINGS = BrokerSettings()


def running_consumer(broker: FakeBroker, recorder: Recorder) -> ReplyConsumer:
    consumer = ReplyConsumer(
        SETTINGS,
        host="hv1",
        on_reply=recorder.on_reply,
        on_rejected=recorder.rejected.append,
        connect=broker.connect,
    )
    consumer.start(timeout_seconds=3)
    return consumer


def test_accepted_reply_reaches_the_callback_then_is_acked() -> None:
    broker, recorder = FakeBroker(), Recorder()
    consumer = running_consumer(broker, recorder)
    tag = broker.deliver(READY)
    eventually(lambda: broker.acked == [tag])
    consumer.close()
    assert recorder.replies == [
        TenantReply(tenant="acme", host="hv1", reply=ReadyReply(vm_uuid=VM), message_id=f"m{tag}")
    ]


@pytest.mark.parametrize(
    ("body", "user_id", "reason"),
    [(READY, None, "missing user_id"), (b"\x00", "acme", "not UTF-8 JSON"), (b"[]", "acme", "JSON list")],
)
def test_rejected_delivery_is_reported_and_acked_never_requeued(
    body: bytes, user_id: str | None, reason: str
) -> None:
    broker, recorder = FakeBroker(), Recorder()
    consumer = running_consumer(broker, recorder)
    bad = broker.deliver(body, user_id=user_id)
    good = broker.deliver(READY)
    eventually(lambda: broker.acked == [bad, good])
    consumer.close()
    assert len(recorder.rejected) == 1
    assert reason in recorder.rejected[0].reason
    assert recorder.rejected[0].user_id == user_id
    assert len(recorder.replies) == 1
    assert broker.nacked == []


def test_callback_failure_requeues_once_then_drops() -> None:
    broker, recorder = FakeBroker(), Recorder(failures_left=2)
    consumer = running_consumer(broker, recorder)
    tag = broker.deliver(READY)
    eventually(lambda: len(broker.nacked) == 2)
    consumer.close()
    assert broker.nacked == [(tag, True), (tag, False)]
    assert recorder.replies == []


def test_callback_failure_then_success_on_redelivery_is_acked() -> None:
    broker, recorder = FakeBroker(), Recorder(failures_left=1)
    consumer = running_consumer(broker, recorder)
    tag = broker.deliver(READY)
    eventually(lambda: broker.acked == [tag])
    consumer.close()
    assert broker.nacked == [(tag, True)]
    assert len(recorder.replies) == 1


def test_start_fails_loudly_when_the_broker_is_unreachable() -> None:
    broker = FakeBroker(refuse_connections=1)
    consumer = ReplyConsumer(SETTINGS, host="hv1", on_reply=Recorder().on_reply, connect=broker.connect)
    with pytest.raises(BrokerUnavailable, match="refuses"):
        consumer.start(timeout_seconds=3)


def test_lost_connection_is_reopened_and_consuming_resumes() -> None:
    broker, recorder = FakeBroker(), Recorder()
    consumer = running_consumer(broker, recorder)
    broker.break_next_poll = True
    eventually(lambda: broker.connections == 2)
    tag = broker.deliver(READY)
    eventually(lambda: broker.acked == [tag])
    consumer.close()
    assert len(recorder.replies) == 1


def test_reply_body_is_the_documented_json() -> None:
    assert json.loads(READY) == {"schema_version": 1, "type": "ready", "vm_uuid": VM, "event_id": None}
