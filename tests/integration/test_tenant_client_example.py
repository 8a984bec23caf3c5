"""examples/tenant_client.py, run as a tenant would run it, reads notices, drops duplicates and answers."""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notifiers.messages import EvacuationScheduled, Reason, ScheduledVm
from notifiers.publisher import NoticePublisher
from notifiers.reply_acceptance import TenantReply
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings
from notifiers.topology import host_replies_queue, reply_routing_key
from tests.fixtures.broker import BrokerJanitor, LabTenant

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tenant_client.py"
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


@pytest.mark.parametrize("postpone", [None, 300], ids=["ready", "postpone"])
def test_example_client_answers_each_scheduled_vm_once(
    make_tenant: Callable[[str], LabTenant], broker_settings: BrokerSettings, broker_janitor: BrokerJanitor,
    postpone: int | None,
) -> None:  # fmt: skip
    tenant, host = make_tenant("example"), f"hv-{secrets.token_hex(3)}"
    broker_janitor.queue(host_replies_queue(host, replies_exchange=broker_settings.replies_exchange))
    replies: queue.Queue[TenantReply] = queue.Queue()
    consumer = ReplyConsumer(broker_settings, host=host, on_reply=replies.put)
    consumer.start(timeout_seconds=10)
    publisher = NoticePublisher(broker_settings)
    publisher.start(timeout_seconds=10)
    notice = EvacuationScheduled(
        host=host, tenant=tenant.name, severity="severe",
        reasons=(Reason(sensor="t", value=97.0, threshold=90.0, unit="celsius", message="hot"),),
        vms=(ScheduledVm(vm_uuid=VM, vm_name="web-1", deadline=datetime.now(UTC) + timedelta(minutes=10)),),
        allowed_replies=("ready", "postpone", "register"),
        reply_exchange=broker_settings.replies_exchange,
        reply_routing_key=reply_routing_key(tenant.name, host),
    )  # fmt: skip
    try:
        publisher.ensure_tenant_queue(tenant.name).result(timeout=10)
        for _ in range(2):  # the second is a redelivered duplicate: same event_id
            publisher.publish(tenant.name, host, notice).result(timeout=10)
        options = ["--postpone", str(postpone)] if postpone else []
        # Runs until 4 s have passed: time to read both deliveries, answer the first, drop the second.
        done = subprocess.run(
            [sys.executable, str(EXAMPLE), "--url", tenant.url, "--timeout", "4", *options],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        reply = replies.get(timeout=10)
    finally:
        publisher.close()
        consumer.close()
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["notice"]["event_id"] == notice.event_id
    assert lines[1] == {"replied": "postpone" if postpone else "ready", "vm_uuid": VM}
    assert lines[2:] == [{"duplicate": notice.event_id}]
    assert (reply.tenant, reply.reply.vm_uuid, reply.reply.type) == (
        tenant.name,
        VM,
        "postpone" if postpone else "ready",
    )
    assert replies.empty()
