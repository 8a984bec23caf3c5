"""examples/tenant_client.py, run as a tenant would run it: reads notices, drops duplicates, answers on a
channel of its own with a fresh message_id, reports returns and refusals, and registers without a host."""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from notifiers.messages import EvacuationScheduled, Reason, RegisterReply, ReplyRejected, ScheduledVm
from notifiers.publisher import NoticePublisher
from notifiers.reply_acceptance import TenantReply
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings
from notifiers.topology import host_replies_queue, reply_routing_key
from notifiers.wire import WireRejectCode
from tests.fixtures.broker import BrokerJanitor, LabTenant

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tenant_client.py"
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
WAIT_SECONDS = 10.0


@dataclass
class World:
    """One fresh tenant, a host whose service consumes replies, and the service's notice publisher."""

    tenant: LabTenant
    host: str
    settings: BrokerSettings
    publisher: NoticePublisher
    replies: queue.Queue[TenantReply]

    def scheduled(self, *, reply_key: str | None = None) -> EvacuationScheduled:
        deadline = datetime.now(UTC) + timedelta(minutes=10)
        return EvacuationScheduled(
            host=self.host, tenant=self.tenant.name, severity="severe",
            reasons=(Reason(sensor="t", value=97.0, threshold=90.0, unit="celsius", message="hot"),),
            vms=(ScheduledVm(vm_uuid=VM, vm_name="web-1", deadline=deadline),),
            allowed_replies=("ready", "postpone", "register"), reply_exchange=self.settings.replies_exchange,
            reply_routing_key=reply_key or reply_routing_key(self.tenant.name, self.host),
        )  # fmt: skip

    def send(self, notice: EvacuationScheduled | ReplyRejected) -> None:
        self.publisher.publish(self.tenant.name, self.host, notice).result(timeout=WAIT_SECONDS)

    def example(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--url", self.tenant.url, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def finished(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """The example's output lines once it exited (successfully)."""
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()]


def consumer(
    settings: BrokerSettings, host: str, janitor: BrokerJanitor
) -> tuple[ReplyConsumer, queue.Queue[TenantReply]]:
    janitor.queue(host_replies_queue(host, replies_exchange=settings.replies_exchange))
    replies: queue.Queue[TenantReply] = queue.Queue()
    started = ReplyConsumer(settings, host=host, on_reply=replies.put)
    started.start(timeout_seconds=WAIT_SECONDS)
    return started, replies


@pytest.fixture
def world(
    make_tenant: Callable[[str], LabTenant], broker_settings: BrokerSettings, broker_janitor: BrokerJanitor
) -> Iterator[World]:
    tenant, host = make_tenant("example"), f"hv-{secrets.token_hex(3)}"
    replies_consumer, replies = consumer(broker_settings, host, broker_janitor)
    publisher = NoticePublisher(broker_settings)
    publisher.start(timeout_seconds=WAIT_SECONDS)
    try:
        publisher.ensure_tenant_queue(tenant.name).result(timeout=WAIT_SECONDS)
        yield World(tenant=tenant, host=host, settings=broker_settings, publisher=publisher, replies=replies)
    finally:
        publisher.close()
        replies_consumer.close()


@pytest.mark.parametrize("postpone", [None, 300], ids=["ready", "postpone"])
def test_example_client_answers_each_scheduled_vm_once_with_a_fresh_message_id(
    world: World, postpone: int | None
) -> None:
    notice = world.scheduled()
    for _ in range(2):  # the second is a redelivered duplicate: same event_id
        world.send(notice)
    # Runs until 4 s have passed: time to read both deliveries, answer the first, drop the second.
    lines = finished(world.example("--timeout", "4", *(["--postpone", str(postpone)] if postpone else [])))
    reply = world.replies.get(timeout=WAIT_SECONDS)
    kind = "postpone" if postpone else "ready"
    assert lines[0]["notice"]["event_id"] == notice.event_id
    assert lines[1] == {"replied": kind, "vm_uuid": VM, "message_id": reply.message_id}
    assert lines[2:] == [{"duplicate": notice.event_id}]
    assert (reply.tenant, reply.reply.vm_uuid, reply.reply.type) == (world.tenant.name, VM, kind)
    assert reply.message_id is not None and uuid.UUID(reply.message_id).version == 4
    assert world.replies.empty()


def test_example_client_prints_a_rejection_with_the_message_id_of_the_refused_reply(world: World) -> None:
    world.send(world.scheduled())
    process = world.example("--timeout", "5")
    reply = world.replies.get(timeout=WAIT_SECONDS)
    world.send(ReplyRejected(
        tenant=world.tenant.name, host=world.host, code=WireRejectCode.STALE_EVENT,
        reason="not the pending event", in_reply_to=reply.message_id, vm_uuid=VM, at=datetime.now(UTC),
    ))  # fmt: skip
    lines = finished(process)
    assert {"rejected": "stale_event", "in_reply_to": reply.message_id, "vm_uuid": VM,
            "reason": "not the pending event"} in lines  # fmt: skip


def test_example_client_reports_a_reply_to_a_host_nobody_serves_as_no_such_host(world: World) -> None:
    # The broker accepts `<tenant>.<any word>`; only the mandatory flag's return says the host does not exist.
    nowhere = reply_routing_key(world.tenant.name, f"hv-{secrets.token_hex(3)}")
    world.send(world.scheduled(reply_key=nowhere))
    lines = finished(world.example("--timeout", "4"))
    assert {"unroutable": nowhere, "meaning": "no such host", "vm_uuid": VM} in lines
    assert world.replies.empty()


def test_example_client_keeps_consuming_after_the_broker_refuses_a_reply(world: World) -> None:
    # A refusal closes the channel it happens on: the example publishes on its own, so it reads on.
    refused = world.scheduled(reply_key=f"someone-else.{world.host}")
    answered = world.scheduled()
    world.send(refused)
    world.send(answered)
    lines = finished(world.example("--timeout", "5"))
    refusals = [line for line in lines if "refused_by_broker" in line]
    assert [line["refused_by_broker"] for line in refusals] == [403]  # ACCESS_REFUSED: not the tenant's key
    notices = [line["notice"]["event_id"] for line in lines if "notice" in line]
    assert notices == [refused.event_id, answered.event_id]
    reply = world.replies.get(timeout=WAIT_SECONDS)
    assert (reply.reply.type, reply.reply.event_id) == ("ready", answered.event_id)


def test_example_client_registers_a_window_on_every_host_without_naming_one(
    world: World, broker_janitor: BrokerJanitor
) -> None:
    other_consumer, other_replies = consumer(world.settings, f"hv-{secrets.token_hex(3)}", broker_janitor)
    try:
        lines = finished(world.example("register", "--vm", VM, "--window-seconds", "900",
                                       "--replies-exchange", world.settings.replies_exchange))  # fmt: skip
        received = [world.replies.get(timeout=WAIT_SECONDS), other_replies.get(timeout=WAIT_SECONDS)]
    finally:
        other_consumer.close()
    assert lines == [{"replied": "register", "vm_uuid": VM, "message_id": received[0].message_id}]
    for reply in received:  # each host's service gets it; only the one holding the VM stores it
        assert reply.tenant == world.tenant.name
        assert reply.reply == RegisterReply(vm_uuid=VM, window_seconds=900)
        assert reply.message_id == received[0].message_id
