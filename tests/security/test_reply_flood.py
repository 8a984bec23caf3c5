"""Attack: a tenant floods its host's replies queue (issue 18, item 3), on the real broker.

The hypervisor's side is connected as evacuator/wiring/incident.py connects it: ReplyConsumer -> ReplyDesk
(with the default rejection limit) -> TenantNotifier -> OutboxPublisher with a real SQLite outbox -> broker,
over the real libvirt host; only the windows are a fake (the service would start moves). The tenant is a user
`evacuator tenant add` would make, publishing with confirms as fast as it can: a 32 MiB reply and thousands
of malformed ones. Before: all were confirmed, and each refusal cost the host an fsync'd outbox write and a
publish. Now the broker refuses what the queue cannot hold (the tenant sees nacks) and the host answers at
most its limit of refusals.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from structlog.testing import capture_logs

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.incident.ledger import IncidentLedger
from evacuator.incident.notices import TenantNotifier
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.reply_limit import DEFAULT_REJECTION_LIMIT
from evacuator.incident.reply_policy import ReplyPolicy
from evacuator.lab.broker import LabBroker
from evacuator.lab.hosts import LabHost
from notifiers.delivery import OutboxPublisher
from notifiers.messages import ReplyRejected
from notifiers.outbox import Outbox
from notifiers.publisher import NoticePublisher
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import REPLIES_MAX_LENGTH, host_replies_queue, reply_routing_key
from tests.fakes.windows import FakeWindows
from tests.fixtures.broker import BrokerJanitor, LabTenant

pytestmark = pytest.mark.integration

POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=7200, max_window_seconds=3600)
BIG_BYTES = 32 * 1024 * 1024
FLOOD_SECONDS = 3.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class Hypervisor:
    """The hypervisor's reply path; start() and stop() it as the daemon would, the desk living on."""

    def __init__(self, settings: BrokerSettings, host: str, desk: ReplyDesk) -> None:
        self._settings, self._host, self._desk = settings, host, desk
        self._consumer: ReplyConsumer | None = None

    def start(self) -> None:
        desk = self._desk
        self._consumer = ReplyConsumer(self._settings, host=self._host, on_reply=desk.on_reply,
                                       on_rejected=desk.on_rejected)  # fmt: skip
        self._consumer.start(timeout_seconds=10)

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


@dataclass
class Side:
    host: str
    queue: str
    hypervisor: Hypervisor
    outbox_file: Path
    tenant: LabTenant


@pytest.fixture
def side(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    broker_janitor: BrokerJanitor, make_tenant: Callable[[str], LabTenant],
) -> Iterator[Side]:  # fmt: skip
    lab, tenant = clean_lab_hosts[0], make_tenant("flood")
    host = f"hv-{secrets.token_hex(3)}"
    queue = broker_janitor.queue(host_replies_queue(host, replies_exchange=broker_settings.replies_exchange))
    libvirt_host = open_libvirt_host(lab.name, lab.uri, lab.pool)
    outbox_file = tmp_path / "outbox.sqlite"
    publisher = OutboxPublisher(NoticePublisher(broker_settings, clock=utc_now), Outbox(outbox_file),
                                confirm_timeout_seconds=5)  # fmt: skip
    publisher.start(timeout_seconds=10)
    ledger = IncidentLedger(tmp_path / "incident.sqlite")
    notifier = TenantNotifier(
        publisher=publisher, host=host, replies_exchange=broker_settings.replies_exchange, clock=utc_now,
        events=ledger, answers_replies=True,
    )  # fmt: skip
    desk = ReplyDesk(
        hypervisor=libvirt_host, windows=FakeWindows(), ledger=ledger, notifier=notifier,
        window_store=libvirt_host, policy=POLICY, clock=utc_now, rejection_limit=DEFAULT_REJECTION_LIMIT,
    )  # fmt: skip
    hypervisor = Hypervisor(broker_settings, host, desk)
    try:
        yield Side(host=host, queue=queue, hypervisor=hypervisor, outbox_file=outbox_file, tenant=tenant)
    finally:
        hypervisor.stop()
        publisher.close()
        libvirt_host.close()
        ledger.close()


@dataclass
class Tally:
    acked: int = 0
    nacked: int = 0
    first_nack_after: int | None = None
    big: str = ""  # what became of the 32 MiB reply: acked or nacked


class Tenant:
    """The attacker: its own user, publishing replies with confirms, `mandatory` and its own user_id."""

    def __init__(self, tenant: LabTenant, exchange: str, host: str) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(tenant.url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._exchange, self._key, self._user = exchange, reply_routing_key(tenant.name, host), tenant.name
        self.tally = Tally()

    def publish(self, body: bytes) -> bool:
        properties = pika.BasicProperties(user_id=self._user, message_id=str(uuid.uuid4()))
        try:
            self._channel.basic_publish(self._exchange, self._key, body, properties, mandatory=True)
        except pika.exceptions.NackError:
            self.tally.nacked += 1
            if self.tally.first_nack_after is None:
                self.tally.first_nack_after = self.tally.acked
            return False
        self.tally.acked += 1
        return True

    def publish_big(self) -> None:
        """32 MiB; a broker whose `max_message_size` is smaller closes the channel (406) instead."""
        try:
            self.tally.big = "acked" if self.publish(b"{" + b" " * (BIG_BYTES - 2) + b"}") else "nacked"
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 406 and "max size" in exc.reply_text
            self.tally.big = "over max_message_size"
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()

    def malformed(
        self, count: int | None = None, *, seconds: float | None = None, stop_at_nack: bool = False
    ) -> None:
        began, sent = time.monotonic(), 0
        while (count is None or sent < count) and (seconds is None or time.monotonic() - began < seconds):
            sent += 1
            if not self.publish(b"{not json " + str(sent).encode()) and stop_at_nack:
                return

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()


class DepthProbe:
    """Samples the queue's depth (ready and unacked) every 0.1 s on an admin connection of its own."""

    def __init__(self, url: str, queue: str) -> None:
        self._url, self._queue = url, queue
        self.deepest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DepthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self._url))
        channel = connection.channel()
        while not self._stop.wait(0.1):
            depth = channel.queue_declare(queue=self._queue, passive=True).method.message_count
            self.deepest = max(self.deepest, depth)
        connection.close()


def messages_in(broker: LabBroker, queue: str) -> int:
    """Messages of `queue` ready to be read now (`rabbitmqctl list_queues` lags by its stats interval)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        return int(connection.channel().queue_declare(queue=queue, passive=True).method.message_count)
    finally:
        connection.close()


def outbox_writes(path: Path) -> int:
    """Notices ever stored in the outbox: its sequence (seeded at creation) counts each write."""
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return int(row[0])


@dataclass
class Notices:
    rejected: list[ReplyRejected] = field(default_factory=list)


def drain_notices(tenant: LabTenant, exchange: str) -> Notices:
    notices = Notices()
    with TenantClient(tenant.url, tenant.name, replies_exchange=exchange) as client:
        while (notice := client.next_notice(2.0)) is not None:
            if isinstance(notice, ReplyRejected):
                notices.rejected.append(notice)
    return notices


def wait_until_read(broker: LabBroker, queue: str, seconds: float = 60.0) -> None:
    """Until nothing is ready, and the consumer's last prefetched deliveries (16 at most) are handled."""
    deadline = time.monotonic() + seconds
    while messages_in(broker, queue) > 0:
        assert time.monotonic() < deadline, f"{queue} not read within {seconds} s"
        time.sleep(0.2)
    time.sleep(1.0)


def _suppressed(logs: Sequence[Mapping[str, Any]], tenant: str) -> int:
    lines = [e for e in logs if e["event"] == "reply_rejections_suppressed" and e["tenant"] == tenant]
    return sum(int(e["suppressed"]) for e in lines)


def test_a_flooded_replies_queue_stays_bounded_and_the_hosts_refusals_within_the_limit(
    side: Side, lab_broker: LabBroker, broker_settings: BrokerSettings
) -> None:
    exchange = broker_settings.replies_exchange
    side.hypervisor.start()  # declares the bounded queue,
    side.hypervisor.stop()  # and the daemon is down while the queue fills (a restart, a slow host)
    written_before = outbox_writes(side.outbox_file)
    attacker = Tenant(side.tenant, exchange, side.host)
    try:
        # 1. Daemon down: the broker takes the queue's length, one over at most (a quorum queue refuses once
        # it is over), then refuses every reply, the 32 MiB one too.
        attacker.malformed(REPLIES_MAX_LENGTH + 50, stop_at_nack=True)
        attacker.publish_big()
        down = attacker.tally
        assert down.first_nack_after is not None and down.first_nack_after <= REPLIES_MAX_LENGTH + 1
        assert down.big in ("nacked", "over max_message_size")
        assert messages_in(lab_broker, side.queue) == down.acked <= REPLIES_MAX_LENGTH + 1

        # 2. Daemon up: it reads the backlog, then the tenant floods as fast as it can, the 32 MiB reply
        # first (taken while the queue is short; it fills the queue's bytes until read, so more nacks).
        attacker.tally = Tally()
        began = utc_now()
        with capture_logs() as logs, DepthProbe(lab_broker.url, side.queue) as probe:
            side.hypervisor.start()
            wait_until_read(lab_broker, side.queue)
            attacker.publish_big()
            attacker.malformed(seconds=FLOOD_SECONDS)
            wait_until_read(lab_broker, side.queue)
        elapsed_seconds = (utc_now() - began).total_seconds()
        up = attacker.tally
    finally:
        attacker.close()
    assert probe.deepest <= REPLIES_MAX_LENGTH + 1

    # The host answered at most its limit: the burst, then per_minute over the time the flood lasted.
    refused = down.acked + up.acked
    limit = DEFAULT_REJECTION_LIMIT
    allowed = limit.burst + int(limit.per_minute * elapsed_seconds / 60) + 1
    written = outbox_writes(side.outbox_file) - written_before
    notices = drain_notices(side.tenant, exchange)
    answered = [e for e in logs if e["event"] == "reply_rejected"]
    assert limit.burst <= written <= allowed, (written, allowed, refused)
    assert len(notices.rejected) == written == len(answered)
    assert {n.code for n in notices.rejected} == {"malformed_reply"}
    # What was held back was counted, and reported in a line now and then instead of one per reply.
    suppressed_lines = [e for e in logs if e["event"] == "reply_rejections_suppressed"]
    assert 1 <= len(suppressed_lines) <= 1 + elapsed_seconds / limit.report_interval_seconds
    assert _suppressed(logs, side.tenant.name) <= refused - written
    print(  # for the closing note (pytest -s)
        f"\nflood: daemon down: {down.acked} taken, then nacked (32 MiB: {down.big}); daemon up: 32 MiB "
        f"{up.big}, {up.acked} taken, {up.nacked} nacked in {FLOOD_SECONDS} s; deepest {probe.deepest}; "
        f"{refused} refused, {written} answered (outbox writes) in {elapsed_seconds:.1f} s"
    )
